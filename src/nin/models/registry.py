"""The one model registry: the networks a run trains (`ARCHS`, `build`) and the ones `nin compare` and
`nin.build_model` offer (`MODELS`: d2l's NiN exercises and the classic CNNs NiN replaces)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nin.errors import NinError
from nin.models.classic import alexnet, lenet, vgg11
from nin.models.nin import NiN, min_resize, nin_bn, nin_fc_head, nin_imagenet, nin_paper

ARCHS = ("nin", "nin-bn", "nin-paper", "nin-imagenet")


def build(arch: str = "nin", dropout: float = 0.5, width: int = 64, in_channels: int = 1, num_classes: int = 10,
          normalize: bool = False) -> NiN:  # fmt: skip
    """The network a config names, for `in_channels` and `num_classes`: `nin` is the seed's (`width`
    unused), `nin-bn` is `nin_bn`, `nin-paper` is `nin_paper`, `nin-imagenet` is `nin_imagenet`."""
    if arch == "nin":
        return NiN(in_channels, num_classes, dropout, normalize=normalize)
    if arch == "nin-bn":
        return nin_bn(width, dropout, in_channels, num_classes, normalize)
    if arch == "nin-imagenet":
        return nin_imagenet(in_channels, num_classes, dropout, normalize)
    if arch == "nin-paper":
        return nin_paper(in_channels, num_classes, dropout, normalize)
    raise NinError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


# name -> (what it is, builder taking the input size, channels and classes). LeNet's sigmoids get d2l's
# Xavier init, the ReLU networks Kaiming init (with Xavier, NiN sits at ln(10) at small sizes: see
# presets/quick.toml).
MODELS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "lenet": ("LeNet (d2l 7.6)", lenet),
    "alexnet": ("AlexNet (d2l 8.1)", alexnet),
    "vgg11": ("VGG-11, channels / 4 as d2l trains it (d2l 8.2)", lambda r, c=1, k=10: vgg11(r, 4, c, k)),
    "nin": ("NiN (d2l 8.3, the seed)", lambda r, c=1, k=10: NiN(c, k)),
    "nin-1conv": ("NiN, one 1x1 conv per block (exercise 1)", lambda r, c=1, k=10: NiN(c, k, mlp_layers=1)),
    "nin-3conv": ("NiN, three 1x1 convs per block (exercise 1)", lambda r, c=1, k=10: NiN(c, k, mlp_layers=3)),
    "nin-3x3": ("NiN, 3x3 convs instead of 1x1 (exercise 2)", lambda r, c=1, k=10: NiN(c, k, mlp_kernel=3)),
    "nin-fc": ("NiN, a dense layer instead of GAP (exercise 3)", nin_fc_head),
}


def smallest_input(name: str) -> int:
    """The smallest input side length the model `name` of `MODELS` accepts (built at 224, a size every one takes)."""
    return min_resize(MODELS[name][1](224))
