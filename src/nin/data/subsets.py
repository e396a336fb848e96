"""Training, validation and test splits as a config cuts a dataset; the per-channel statistics of a split."""

from __future__ import annotations

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

SUBSET_SEED = 20_141_312  # fixes every subset: the same images for every --seed, call and rank (NiN's arXiv number)


def pick(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The sorted indices of `n` of the examples with `labels`, every class drawn in proportion to its share
    (largest remainders round), at random with a fixed seed: the same subset on every call and every rank. A
    folder lists its files class by class, so its first `n` would be its first classes alone."""
    if n >= len(labels):
        return torch.arange(len(labels))
    classes, counts = labels.unique(return_counts=True)
    quota = counts * n / len(labels)
    take = quota.floor().long()
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    shuffled = torch.randperm(len(classes), generator=generator)  # equal remainders: classes in random order
    ranked = shuffled[torch.argsort((quota - take)[shuffled], descending=True, stable=True)]
    take[ranked[: n - int(take.sum())]] += 1
    order = torch.randperm(len(labels), generator=generator)
    return torch.cat([order[labels[order] == c][:k] for c, k in zip(classes, take)]).sort().values


def limit(data: Any, n: int) -> Any:
    """`n` examples of `data` (a `Dataset` or `Files`) by `pick`, or all of them for 0."""
    return data[pick(data.labels, n)] if n else data


def few(data: Dataset | Files, n: int) -> Dataset:
    """`n` examples of `data` drawn by `pick`, in memory (a streamed split's decoded here, as held-out images):
    the few that cam and report draw and int8 export calibrates on, in bounded memory."""
    data = limit(data, n)
    return data.decoded() if isinstance(data, Files) else data


def split(data: Dataset | Files, n: int) -> tuple[Dataset | Files, Dataset | Files]:
    """(training, validation): `n` images, every class in proportion (`pick`), are held out for validation."""
    if not 0 <= n < len(data):
        raise NinError(f"--val-split {n}: the training set has {len(data):,} images; hold out fewer")
    held = torch.zeros(len(data), dtype=torch.bool)
    held[pick(data.labels, n)] = True
    return data[(~held).nonzero().flatten()], data[held.nonzero().flatten()]


def splits(config: Config, data_dir: str | Path | None = None) -> tuple[Any, Any, Any]:
    """(training, validation or None, test) as `config` cuts its dataset: each a `Dataset` in memory, or for a
    streamed folder (`streams`) a `Files`. A folder dataset without a held-out folder is tested on the
    `val_split` images it holds out (and then has no separate validation set)."""
    stream = streams(config, data_dir)
    train = load_part(config, "train", data_dir, stream)
    val = None
    if config.val_split:
        train, val = split(train, config.val_split)
    test = load_part(config, "test", data_dir, stream)
    if test is None:
        test, val = held_out(val, data_dir), None
    test = test.with_channels(train.channels)  # a gray training set and a colour test image, or so
    return limit(train, config.train_limit), val, limit(test, config.test_limit)


def load_part(config: Config, part: str, data_dir: str | Path | None, stream: bool) -> Any:
    """The `part` ('train' or 'test') of `config`'s dataset: in memory, or `stream`ed (a `Files`)."""
    if stream:
        if data_dir is None:  # a streamed run's model directory, say: it never names a folder of its own
            raise NinError("this run streamed an image folder; say where it is with --data-dir DIR")
        return stream_folder(Path(data_dir), part, config.resize)
    return load_split(config.dataset, part, data_dir, config.image_size, config.skip_bad_images)


def held_out(val: Any, data_dir: str | Path | None) -> Any:
    """The images a folder without test/ or val/ is tested on: those --val-split held out, else one error."""
    if val is None:
        raise NinError(f"{data_dir}: no test/ or val/ folder; add one, or hold out training images to test on "
                       "with --val-split N (nin train, nin sweep)")  # fmt: skip
    return val


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


def test_set(config: Config, spec: Spec, data_dir: str | Path | None = None) -> Dataset | Files:
    """All the held-out images of a run with `config` trained on `spec`'s data, as training tested on them (see
    `splits`; a streamed run's are streamed: `Files`); from `data_dir`, else the folder the run remembers, else
    the dataset's default."""
    data_dir = data_dir or spec.data_dir
    source = str(data_dir or f"the {config.dataset} data")
    if spec.dataset not in DATASETS:
        raise NinError(f"a bare state_dict says nothing of the data it was trained on (here: {spec.channels} "
                       f"channel(s), {len(spec.classes)} classes), so it cannot be tested; this needs a run "
                       "directory or checkpoint written by nin train")  # fmt: skip
    stream = spec.crop == "center"  # a streamed run's held-out images are streamed: bounded memory
    test = load_part(config, "test", data_dir, stream)
    if test is None:
        test = held_out(split(load_part(config, "train", data_dir, stream), config.val_split)[1] if config.val_split
                        else None, data_dir)  # fmt: skip
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
