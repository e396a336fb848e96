"""The datasets by name: `load` and `load_split` pick the reader (IDX, CIFAR archive or image folder)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nin.data.cifar import load_cifar
from nin.data.download import cache_dir
from nin.data.folder import channels_of, classes_of, load_folder
from nin.data.idx import IDX, load_idx
from nin.data.types import Dataset
from nin.errors import NinError

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder")
REPO_DATA = Path(__file__).resolve().parents[3] / "data"  # the repository's bundled copies
BUNDLED = REPO_DATA / "fashion-mnist"


def load(name: str = "fashion-mnist", data_dir: str | Path | None = None, image_size: int = 32,
         skip_bad_images: bool = False) -> tuple[Dataset, Dataset | None]:  # fmt: skip
    """(train, test) of the dataset `name`, checked: `fashion-mnist`, `mnist` (bundled), `cifar10`, `cifar100`
    (downloaded into `data_dir` on first use) or `folder` (`data_dir`/train/<class>/*, `data_dir`/test/<class>/*;
    test is None without a test folder). `data_dir` defaults to $NIN_DATA_DIR/<name>, else the bundled copy,
    else ~/.cache/nin/<name>. `image_size` and `skip_bad_images` are for `folder` (see nin/data/folder.py).

    >>> train, test = nin.data.load("mnist")
    >>> train.images.shape, train.images.dtype, test.classes[test.labels[0]]
    (torch.Size([60000, 1, 28, 28]), torch.uint8, '7')
    """
    return tuple(load_split(name, s, data_dir, image_size, skip_bad_images) for s in ("train", "test"))  # type: ignore[return-value]


def load_split(name: str, split: str, data_dir: str | Path | None = None, image_size: int = 32,
               skip_bad_images: bool = False) -> Dataset | None:  # fmt: skip
    """One split ('train' or 'test') of `load`."""
    if name not in DATASETS:
        raise NinError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == "folder":
        if data_dir is None:
            raise NinError("--dataset folder needs --data-dir DIR: a folder with train/<class>/ (and test/<class>/) "
                           "holding PNG or JPEG images")  # fmt: skip
        return load_folder(Path(data_dir), split, image_size, skip_bad_images)
    folder = Path(data_dir) if data_dir else default_data_dir(name)
    if name in IDX:
        return load_idx(name, folder, split)
    return load_cifar(name, folder, split)


def shape_of(name: str, data_dir: str | Path | None = None) -> tuple[int, int]:
    """(channels, classes) of a dataset without loading it; for `folder`, from its train/ class folders and
    the headers of their images."""
    if name == "folder":
        if data_dir is None:
            raise NinError("--dataset folder needs --data-dir DIR to count its classes")
        return channels_of(Path(data_dir)), len(classes_of(Path(data_dir)))
    return {"fashion-mnist": (1, 10), "mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100)}[name]


def default_data_dir(name: str = "fashion-mnist") -> Path:
    """$NIN_DATA_DIR/<name>, else the copy bundled with the repository, else ~/.cache/nin/<name>."""
    if os.environ.get("NIN_DATA_DIR"):
        return Path(os.environ["NIN_DATA_DIR"]) / name
    if (REPO_DATA / name).is_dir():
        return REPO_DATA / name
    return cache_dir() / name


def load_fashion_mnist(split: str, data_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split,
    checksum-verified; from `data_dir`, else as `load` finds it.

    >>> images, labels = nin.load_fashion_mnist("test")
    >>> images.shape, images.dtype, nin.CLASS_NAMES[labels[0]]
    (torch.Size([10000, 28, 28]), torch.uint8, 'Ankle boot')
    """
    data = load_split("fashion-mnist", split, data_dir)
    return data.images[:, 0], data.labels
