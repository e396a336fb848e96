"""torch.hub entrypoints for nin's networks: `torch.hub.load(REPO, "nin_fast", pretrained=True)`.

Each returns an `nn.Module` in eval mode that takes float images (N, C, H, W) with values in [0, 1]
(pixel / 255, no other normalisation: a normalising network does its own) at its input size, and returns
logits (N, classes): `nin_fast` and `nin_mnist_fast` 1 x 28 x 28 (Fashion-MNIST, MNIST), `nin_d2l`
1 x 224 x 224 (Fashion-MNIST's classes). With `pretrained=True` the weights are those that ship with nin
(checked against their SHA-256; nothing is downloaded); the pretrained modules also carry `classes`,
`input_size` (C, H, W) and `config` (their model description), with or without huggingface_hub installed.
"""

import sys
from pathlib import Path

# the import names of nin's own dependencies (pyproject.toml), which torch.hub checks before importing nin
dependencies = ["torch", "numpy", "matplotlib", "tqdm", "PIL", "safetensors"]

# torch.hub imports this file from the repository root: use the nin beside it (src/), which matches this
# file, ahead of an installed one; from an installed package without src/, the installed nin.
_SRC = Path(__file__).resolve().parent / "src"
if (_SRC / "nin" / "__init__.py").is_file() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))


def _fast(name: str, pretrained: bool):
    """The shipped weights `name`, or (untrained) the fast preset's network they were trained as."""
    import nin
    from nin.models.registry import build

    if pretrained:
        return nin.load_weights(name).model
    config = nin.load_preset("fast")
    return build(config.arch, config.dropout, config.width, 1, 10, config.normalize).eval()


def nin_fast(pretrained: bool = False):
    """The fast preset's network (NiN with BatchNorm, width 16) for Fashion-MNIST, 1 x 28 x 28 in [0, 1];
    `pretrained=True`: the weights that ship with nin (`nin weights fast` shows their model card)."""
    return _fast("fast", pretrained)


def nin_mnist_fast(pretrained: bool = False):
    """The same network for MNIST digits, 1 x 28 x 28 in [0, 1]; `pretrained=True`: the weights that ship with
    nin (`nin weights mnist-fast`)."""
    return _fast("mnist-fast", pretrained)


def nin_d2l(pretrained: bool = False):
    """d2l's NiN (the seed notebook's network), untrained, for 1 x 224 x 224 images in [0, 1] and 10 classes."""
    import nin

    if pretrained:
        raise ValueError("nin ships no weights for d2l's NiN; train them with `nin train --preset d2l`")
    return nin.NiN().eval()
