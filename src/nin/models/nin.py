"""Network in Network (Lin, Chen & Yan, 2014) as defined in d2l's NiN chapter.

`NiN()` is the seed notebook's `nn.Sequential`, layer for layer: iterating over it gives the
same layers, and its `state_dict()` has the same keys and shapes, so weights move both ways.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from nin.errors import NinError

__all__ = [
    "INITS",
    "NiN",
    "Normalize",
    "check_resize",
    "feature_sizes",
    "init_kaiming",
    "init_weights",
    "layer_summary",
    "min_resize",
    "nin_bn",
    "nin_block",
    "nin_imagenet",
    "nin_paper",
]


def nin_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    strides: int,
    padding: int,
    mlp_layers: int = 2,
    mlp_kernel: int = 1,
    batch_norm: bool = False,
) -> nn.Sequential:
    """An mlpconv block: a k x k convolution, then two 1x1 convolutions (an MLP per pixel).

    `mlp_layers` and `mlp_kernel` exist for d2l's exercises (one or three 1x1 convolutions; 3x3 instead
    of 1x1, padded to keep the size); `batch_norm` puts BatchNorm between each convolution (then
    without bias: BatchNorm's shift replaces it) and its ReLU. The defaults are the seed's block.

    >>> block = nin.nin_block(1, 96, kernel_size=11, strides=4, padding=0)
    >>> block(torch.zeros(1, 1, 224, 224)).shape
    torch.Size([1, 96, 54, 54])
    """
    layers: list[nn.Module] = []
    convs = [(in_channels, kernel_size, strides, padding)]
    convs += [(out_channels, mlp_kernel, 1, mlp_kernel // 2)] * mlp_layers
    for channels, k, s, p in convs:
        layers.append(nn.Conv2d(channels, out_channels, k, s, p, bias=not batch_norm))
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU()] if batch_norm else [nn.ReLU()]
    return nn.Sequential(*layers)


# The feature blocks as (out_channels, kernel_size, stride, padding). Each is followed by a 3x3/2
# max-pool. Shapes are for a (1, 1, 224, 224) input.
BLOCKS = (
    (96, 11, 4, 0),  # (1, 96, 54, 54), pooled to (1, 96, 26, 26)
    (256, 5, 1, 2),  # (1, 256, 26, 26), pooled to (1, 256, 12, 12)
    (384, 3, 1, 1),  # (1, 384, 12, 12), pooled to (1, 384, 5, 5)
)


class Normalize(nn.Module):
    """(x - mean) / std per channel: the training set's numbers, set once before training and saved with
    the weights (buffers), so that evaluation, prediction and an exported ONNX model all use them."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NiN(nn.Sequential):
    """d2l's NiN for `in_channels` x 224 x 224 input: 1,992,166 parameters, 0.762 GMAC at 224.

    The other arguments make the rest of the NiN family: `mlp_layers` and `mlp_kernel` change every
    block for d2l's exercises (see `nin_block`); `blocks`, `pool` and `batch_norm` make `nin_bn`;
    `normalize` puts a `Normalize` layer first. `layers` builds any other network that ends in class
    maps, global average pooling and Flatten (`nin_paper`). Shapes for a (1, 1, 224, 224) input are
    given after each layer.

    >>> net = nin.NiN()
    >>> net(torch.zeros(1, 1, 224, 224)).shape
    torch.Size([1, 10])
    >>> sum(p.numel() for p in net.parameters())
    1992166
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        dropout: float = 0.5,
        mlp_layers: int = 2,
        mlp_kernel: int = 1,
        blocks: tuple[tuple[int, int, int, int], ...] = BLOCKS,
        pool: int = 3,
        batch_norm: bool = False,
        normalize: bool = False,
        layers: list[nn.Module] | None = None,
    ):
        if layers is not None:
            super().__init__(*layers)
            return
        layers = [Normalize(in_channels)] if normalize else []
        channels = in_channels
        mlp = dict(mlp_layers=mlp_layers, mlp_kernel=mlp_kernel, batch_norm=batch_norm)
        for out_channels, kernel_size, stride, padding in blocks:
            layers += [
                nin_block(channels, out_channels, kernel_size, stride, padding, **mlp),
                nn.MaxPool2d(kernel_size=pool, stride=2),
            ]
            channels = out_channels
        super().__init__(
            *layers,
            nn.Dropout(dropout),  # (1, 384, 5, 5)
            nin_block(channels, num_classes, kernel_size=3, strides=1, padding=1, **mlp),  # (1, 10, 5, 5)
            nn.AdaptiveAvgPool2d((1, 1)),  # (1, 10, 1, 1): global average pooling of each class map
            nn.Flatten(),  # (1, 10)
        )

    def __getitem__(self, idx: int | slice) -> nn.Module:
        # a slice is a plain nn.Sequential (nn.Sequential would call NiN's constructor with the layers):
        # net[:-2] is the network up to the class maps, before global average pooling
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


def nin_bn(width: int = 64, dropout: float = 0.5, in_channels: int = 1, num_classes: int = 10,
           normalize: bool = False) -> NiN:  # fmt: skip
    """A NiN for the 28x28 images themselves (the fast preset): three mlpconv blocks of a
    3x3 convolution and two 1x1 convolutions, `width`, 2 x `width` and 4 x `width` channels wide,
    each with BatchNorm and followed by a 2x2 max-pool (28 -> 14 -> 7 -> 3), then the class-map block
    and global average pooling, as in NiN: no fully connected layer.

    >>> net = nin.nin_bn(width=16)  # the fast preset's network
    >>> sum(p.numel() for p in net.parameters())
    40628
    """
    blocks = ((width, 3, 1, 1), (2 * width, 3, 1, 1), (4 * width, 3, 1, 1))
    return NiN(in_channels, num_classes, dropout, blocks=blocks, pool=2, batch_norm=True, normalize=normalize)


def nin_paper(in_channels: int = 3, num_classes: int = 10, dropout: float = 0.5, normalize: bool = False) -> NiN:
    """The NiN paper's CIFAR network (Lin, Chen & Yan, 2014, section 4.2) as its widely used reproduction
    defines it (the paper gives no widths): three mlpconv layers, 192-160-96 with a 5x5 conv, 192-192-192
    with a 5x5 conv, 192-192-classes with a 3x3 conv; a 3x3/2 max-pool, dropout, a 3x3/2 average pool,
    dropout, then global average pooling. 32x32 -> 16x16 -> 8x8 class maps.

    >>> net = nin.nin_paper()
    >>> sum(p.numel() for p in net.parameters()), net(torch.zeros(1, 3, 32, 32)).shape
    (966986, torch.Size([1, 10]))
    """
    layers: list[nn.Module] = [Normalize(in_channels)] if normalize else []
    for out, k, pool in ((((192, 160, 96)), 5, nn.MaxPool2d), ((192, 192, 192), 5, nn.AvgPool2d)):
        layers += [_mlpconv(in_channels, out, k), pool(kernel_size=3, stride=2, ceil_mode=True), nn.Dropout(dropout)]
        in_channels = out[-1]
    layers += [_mlpconv(in_channels, (192, 192, num_classes), 3), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
    return NiN(layers=layers)


def nin_imagenet(in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5, normalize: bool = False) -> NiN:
    """The Caffe Model Zoo's ImageNet NiN (Lin et al.; 59.36% top-1 on ImageNet's validation set): the seed's
    three mlpconv blocks (96, 256, 384 channels; 11x11/4, 5x5, 3x3), each followed by a 3x3/2 max-pool in
    ceil mode (224 -> 54 -> 27 -> 13 -> 6), dropout, then a 3x3 mlpconv block 1024-1024-classes (each conv with
    ReLU) and global average pooling (the 6x6 average pool at 224).

    >>> net = nin.nin_imagenet()
    >>> sum(p.numel() for p in net.parameters()), net(torch.zeros(1, 3, 224, 224)).shape
    (7595176, torch.Size([1, 1000]))
    """
    layers: list[nn.Module] = [Normalize(in_channels)] if normalize else []
    for out_channels, kernel_size, stride, padding in BLOCKS:
        layers += [nin_block(in_channels, out_channels, kernel_size, stride, padding),
                   nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)]  # fmt: skip
        in_channels = out_channels
    head = nin_block(in_channels, 1024, kernel_size=3, strides=1, padding=1)
    head[-2] = nn.Conv2d(1024, num_classes, kernel_size=1)  # the last 1x1 conv gives the class maps
    layers += [nn.Dropout(dropout), head, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
    return NiN(layers=layers)


def _mlpconv(in_channels: int, channels: tuple[int, int, int], kernel_size: int) -> nn.Sequential:
    """A k x k convolution (padded to keep the size), then two 1x1 convolutions, each with ReLU."""
    (a, b, c), layers = channels, []
    for cin, cout, k in ((in_channels, a, kernel_size), (a, b, 1), (b, c, 1)):
        layers += [nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU()]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """d2l's `init_weights`: Xavier-uniform weights for Linear/Conv2d; biases keep PyTorch's default.

    >>> net = nin.NiN().apply(nin.init_weights)
    """
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


def init_kaiming(module: nn.Module) -> None:
    """He et al. (2015) init for ReLU networks: keeps the signal's variance through all 12 conv layers,
    where Xavier halves it at every ReLU, so NiN starts learning at once instead of sitting at ln(10)."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:  # none before BatchNorm
            nn.init.zeros_(module.bias)


INITS = {"xavier": init_weights, "kaiming": init_kaiming}


def feature_sizes(model: nn.Module, size: int) -> list[int]:
    """Side length after each convolution and pooling layer for a `size` x `size` input."""
    sizes = []
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (_pair(getattr(layer, name)) for name in ("kernel_size", "stride", "padding"))
            size = (-(-(size + 2 * p - k) // s) if getattr(layer, "ceil_mode", False) else (size + 2 * p - k) // s) + 1
            sizes.append(size)
    return sizes


def _pair(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def min_resize(model: nn.Module) -> int:
    """The smallest input side length for which every layer still has an output of at least 1x1."""
    size = 1
    while min(feature_sizes(model, size)) < 1:
        size += 1
    return size


MAX_RESIZE = 1024  # small images upscaled further only cost memory (activations grow with its square)


def check_resize(net: nn.Module, resize: int) -> None:
    """Refuse input sizes the network cannot take (too small) or that make no sense (too large)."""
    if resize < (smallest := min_resize(net)):
        raise NinError(
            f"resize {resize} is too small for this network: after its max-pools nothing would be "
            f"left; the smallest input it accepts is {smallest}x{smallest}"
        )
    if resize > MAX_RESIZE:
        raise NinError(f"resize {resize} is larger than {MAX_RESIZE}, the most nin takes")


def layer_summary(model: nn.Module, size: int, in_channels: int = 1) -> list[dict]:
    """One row per top-level layer (the seed's shape walk): name, output shape, parameters, MACs.

    MACs (multiply-accumulates) count convolutions and linear layers only; pooling and ReLU are a
    rounding error. This is the convention behind "0.762 GMAC" for NiN at 224.

    >>> nin.layer_summary(nin.NiN(), 224)[0]
    {'name': '0 nin_block', 'output_shape': (1, 96, 54, 54), 'params': 30336, 'macs': 87619968}
    """
    macs: dict[nn.Module, int] = {}

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # each output element costs one MAC per weight of its filter: (in_channels/groups) * k * k
        per_output = module.in_features if isinstance(module, nn.Linear) else module.weight[0].numel()
        macs[module] = output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    rows = []
    x = torch.zeros(1, in_channels, size, size)
    training = model.training
    model.eval()  # dropout off: the walk draws no random numbers, so it leaves training's RNG stream alone
    try:
        with torch.no_grad():
            for i, layer in enumerate(model.children()):
                x = layer(x)
                kind = "nin_block" if isinstance(layer, nn.Sequential) else type(layer).__name__
                rows.append(
                    {
                        "name": f"{i} {kind}",
                        "output_shape": tuple(x.shape),
                        "params": sum(p.numel() for p in layer.parameters()),
                        "macs": sum(macs.get(m, 0) for m in layer.modules()),
                    }
                )
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return rows


def nin_fc_head(resize: int, in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """d2l NiN exercise 3: the class maps go through a fully connected layer instead of global
    average pooling (an `nn.Sequential` with NiN's layers up to the class maps, then Flatten + Linear)."""
    maps = NiN(in_channels, num_classes)[:-2]
    with torch.no_grad():
        size = maps(torch.zeros(1, in_channels, resize, resize)).numel()
    return nn.Sequential(*maps, nn.Flatten(), nn.Linear(size, num_classes))
