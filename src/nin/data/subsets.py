"""Training, validation and test splits as a config cuts a dataset; the per-channel statistics of a split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nin.data.folder import decoded_bytes, stream_folder
from nin.data.registry import DATASETS, load_split
from nin.data.stream import Files
from nin.data.types import Dataset, Spec
from nin.errors import NinError

if TYPE_CHECKING:
    from nin.config import Config

VAL_SEED = 20_141_312  # fixes the validation split: the same images for every --seed (NiN's arXiv number)


def split(data: Dataset | Files, n: int) -> tuple[Dataset | Files, Dataset | Files]:
    """(training, validation): `n` images drawn at random with a fixed seed are held out for validation."""
    if not 0 <= n < len(data):
        raise NinError(f"--val-split {n}: the training set has {len(data):,} images; hold out fewer")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(VAL_SEED))
    return data[order[n:].sort().values], data[order[:n].sort().values]


def splits(config: Config, data_dir: str | Path | None = None) -> tuple[Any, Any, Any]:
    """(training, validation or None, test) as `config` cuts its dataset: each a `Dataset` in memory, or for a
    streamed folder (`streams`) a `Files`. A folder dataset without a held-out folder is tested on the
    `val_split` images it holds out (and then has no separate validation set)."""
    stream = streams(config, data_dir)

    def read(part: str) -> Any:
        if stream:
            return stream_folder(Path(data_dir), part, config.resize)  # type: ignore[arg-type]
        return load_split(config.dataset, part, data_dir, config.image_size, config.skip_bad_images)

    train = read("train")
    val = None
    if config.val_split:
        train, val = split(train, config.val_split)
    test = read("test")
    if test is None:
        if val is None:
            raise NinError(f"{data_dir}: no test/ or val/ folder; add one, or hold out training images to test on "
                           "with --val-split N (nin train, nin sweep)")  # fmt: skip
        test, val = val, None
    test = test.with_channels(train.channels)  # a gray training set and a colour test image, or so
    if config.train_limit:
        train = train[: config.train_limit]
    if config.test_limit:
        test = test[: config.test_limit]
    return train, val, test


def streams(config: Config, data_dir: str | Path | None) -> bool:
    """Whether `config`'s folder is streamed: with --stream, or when decoding its training split into memory
    would take more than --memory-budget (then one line says so)."""
    if config.stream or config.dataset != "folder" or data_dir is None:
        return config.stream
    n, need = decoded_bytes(Path(data_dir), config.image_size)
    if need <= config.memory_budget * 1e9:
        return False
    print(
        f"streaming {data_dir} (--stream): its {n:,} training images would take {need / 1e9:.1f} GB of memory "
        f"decoded at {config.image_size}x{config.image_size}, over --memory-budget {config.memory_budget:g} GB"
    )
    return True


def test_set(config: Config, spec: Spec, data_dir: str | Path | None = None) -> Dataset:
    """The test images of a run with `config` trained on `spec`'s data, as training tested on them (see
    `splits`); from `data_dir`, else the folder the run remembers, else the dataset's default."""
    data_dir = data_dir or spec.data_dir
    source = str(data_dir or f"the {config.dataset} data")
    if spec.dataset not in DATASETS:
        raise NinError(f"a bare state_dict says nothing of the data it was trained on (here: {spec.channels} "
                       f"channel(s), {len(spec.classes)} classes), so it cannot be tested; this needs a run "
                       "directory or checkpoint written by nin train")  # fmt: skip
    if config.dataset != "folder" or (Path(data_dir or "") / "test").is_dir():
        test = load_split(config.dataset, "test", data_dir, config.image_size, config.skip_bad_images)
    else:
        test = splits(dataclasses.replace(config, train_limit=0, test_limit=0), data_dir)[2]
    return spec.check(test, source)  # type: ignore[arg-type]


def mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W) as the network sees them (/255)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(4096):  # float64 in chunks: exact enough, and no 8x copy of the dataset
        x = chunk.double().div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = images.numel() / images.shape[1]
    mean = total / n
    return mean.float(), (squares / n - mean.square()).clamp_min(1e-12).sqrt().float()
