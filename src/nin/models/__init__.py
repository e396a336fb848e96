"""The networks: the seed's NiN and its variants (nin.py), the classic CNNs it replaces (classic.py), the one
registry of both (registry.py), and BatchNorm over a torchrun job's global batch (syncbn.py)."""

from nin.models.classic import alexnet, lenet, vgg11
from nin.models.nin import (
    NiN,
    Normalize,
    init_kaiming,
    init_weights,
    layer_summary,
    nin_block,
    nin_bn,
    nin_imagenet,
    nin_paper,
)
from nin.models.registry import ARCHS, MODELS, build

__all__ = ["ARCHS", "MODELS", "NiN", "Normalize", "alexnet", "build", "init_kaiming", "init_weights", "layer_summary",
           "lenet", "nin_block", "nin_bn", "nin_imagenet", "nin_paper", "vgg11"]  # fmt: skip
