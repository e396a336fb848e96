"""nin: d2l's Network in Network on Fashion-MNIST (and MNIST, CIFAR, your own images), faithful and fast.

The public API is `__all__`, documented in docs/api.md; the `nin` command is built on it. Everything else
is internal and may change.

>>> import nin
>>> run = nin.train("fast", out="runs/fast")
>>> run.test_acc
0.921
>>> nin.load_weights("fast").predict(["shirt.png"])  # weights that ship with nin: no training
"""

# `nin.train` is the API's function, and the training loop's module has the same name, nin/train.py.
# Python sets a package's attribute to a submodule when the submodule is first imported: nin.api imports
# that module, and the import below then binds `nin.train` to the function, for good. Reach the module
# with `from nin.train import ...` or importlib.import_module("nin.train").
from nin import data
from nin.api import Run, build_model, load, train
from nin.config import Config, load_preset, presets
from nin.data import CLASS_NAMES, load_fashion_mnist
from nin.errors import NinError
from nin.model import NiN, init_weights, layer_summary, nin_block, nin_bn, nin_paper
from nin.shipped import load_weights

__all__ = [
    "CLASS_NAMES",
    "Config",
    "NiN",
    "NinError",
    "Run",
    "build_model",
    "data",
    "init_weights",
    "layer_summary",
    "load",
    "load_fashion_mnist",
    "load_weights",
    "load_preset",
    "nin_block",
    "nin_bn",
    "nin_paper",
    "presets",
    "train",
]
__version__ = "0.1.0"
