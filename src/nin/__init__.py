"""nin: d2l's Network in Network on Fashion-MNIST, faithful and fast."""

from nin.data import CLASS_NAMES, load_fashion_mnist
from nin.model import NiN, init_weights, nin_block

__all__ = ["CLASS_NAMES", "NiN", "init_weights", "load_fashion_mnist", "nin_block"]
__version__ = "0.1.0"
