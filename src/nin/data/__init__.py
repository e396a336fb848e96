"""Datasets: verified files read in their raw formats, kept in memory as uint8, resized per batch on the device.

Like airbench's loader there is no DataLoader and no worker process: Fashion-MNIST is 55 MB of uint8,
CIFAR 184 MB, and a batch is an index into it, converted to float and resized where the model runs.
That is d2l's `Resize(resize)` + `ToTensor()` done for 256 images at once instead of one by one.

Every dataset is a `Dataset`: uint8 images (N, C, H, W), int64 labels and class names. Fashion-MNIST
and MNIST are IDX files (idx.py, bundled with the repository); CIFAR-10/100 are the official *binary*
archives (cifar.py: fixed-size records, nothing unpickled), downloaded on first use; `folder` is a
class-per-folder tree of images (folder.py), decoded by the one image decoder (images.py). How any image
becomes a network's input, in training and everywhere after it: preprocess.py.

>>> train, test = nin.data.load("fashion-mnist")
>>> train.images.shape, test.classes[test.labels[0]]
(torch.Size([60000, 1, 28, 28]), 'Ankle boot')
"""

from nin.data.batches import Batches, augment
from nin.data.preprocess import Preprocess, prepare, to_inputs
from nin.data.registry import DATASETS, default_data_dir, load, load_fashion_mnist, load_split, shape_of
from nin.data.subsets import mean_std, split, splits, test_set
from nin.data.types import CLASS_NAMES, Dataset, Spec

__all__ = ["CLASS_NAMES", "DATASETS", "Batches", "Dataset", "Preprocess", "Spec", "augment", "default_data_dir",
           "load", "load_fashion_mnist", "load_split", "mean_std", "prepare", "shape_of", "split", "splits", "test_set",
           "to_inputs"]  # fmt: skip
