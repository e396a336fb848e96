"""nin: d2l's Network in Network on Fashion-MNIST (and MNIST, CIFAR, your own images), faithful and fast.

The public API is `__all__`, documented in docs/api.md; the `nin` command is built on it. Everything else
is internal and may change.

>>> import nin
>>> run = nin.train("fast", out="runs/fast")
>>> run.test_acc
0.921
>>> nin.load_weights("fast").predict(["shirt.png"])  # weights that ship with nin: no training
"""

from nin import data
from nin.api import Run, build_model, from_pretrained, load, load_weights, train
from nin.config import Config, load_preset, presets
from nin.data.registry import load_fashion_mnist
from nin.data.types import CLASS_NAMES
from nin.errors import NinError
from nin.models.nin import NiN, init_weights, layer_summary, nin_block, nin_bn, nin_imagenet, nin_paper
from nin.version import __version__ as __version__

__all__ = [
    "CLASS_NAMES",
    "Config",
    "NiN",
    "NinError",
    "Run",
    "build_model",
    "data",
    "from_pretrained",
    "init_weights",
    "layer_summary",
    "load",
    "load_fashion_mnist",
    "load_weights",
    "load_preset",
    "nin_block",
    "nin_bn",
    "nin_imagenet",
    "nin_paper",
    "presets",
    "train",
]
