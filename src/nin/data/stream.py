"""Streaming image folders (`--stream`): images decoded per batch in worker processes, memory bounded.

An image folder too large to decode into memory (100,000 photos at 128 px are 4.9 GB of uint8; ImageNet at
224 px 190 GB) is kept as its file names (`Files`) and read batch by batch: each batch is decoded by a worker
process (`torch.utils.data.DataLoader`: a pool of processes with a bounded queue of prefetched batches, worker
errors and shutdown handled; multiprocessing by hand would rewrite that), while the main process trains on
the previous one. Peak memory is one model plus `workers` x `PREFETCH` batches, whatever the number of images.

Training images get the photo-style augmentation of torchvision's ImageNet recipe, `RandomResizedCrop` (a
random 8-100% of the area, aspect ratio 3/4 to 4/3) to `size` and a random horizontal flip, from a JPEG decoded
at a reduced scale no smaller than the smallest crop needs; held-out images take the run's preprocessing
(nin/data/preprocess.py: `center`, the shorter side to size * 8/7, the centre `size` x `size`). Each image's
randomness comes from (seed, epoch, image index) alone, never from a worker's state, so any number of
workers, and a run resumed mid-epoch, see exactly the same pixels. The order of an epoch and each rank's part
of a batch are `batches.shard`'s, as for data in memory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nin.data.batches import Batches, shard
from nin.data.images import open_image
from nin.data.preprocess import CENTER, from_image
from nin.data.types import Dataset
from nin.errors import NinError

PREFETCH = 2  # batches each worker decodes ahead
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's share of the area and aspect ratios


@dataclass(frozen=True)
class Files:
    """One split of an image folder as its files: relative `names` under `root`, int64 `labels`, the
    `classes`, and the `channels` and side length (`size`) its images are decoded to.

    The names are one numpy byte array, not a list of str: forked workers read it without touching a
    reference count per name, so their memory stays shared with the main process (copy-on-write)."""

    root: str
    names: np.ndarray
    labels: torch.Tensor
    classes: tuple[str, ...]
    channels: int
    size: int
    crop = "center"  # how its held-out images are preprocessed (not a field: every streamed split is)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: slice | torch.Tensor) -> Files:
        picked = index.numpy() if isinstance(index, torch.Tensor) else index
        return dataclasses.replace(self, names=self.names[picked], labels=self.labels[index])

    def with_channels(self, channels: int) -> Files:
        return dataclasses.replace(self, channels=channels)

    def decoded(self) -> Dataset:
        """This split decoded in this process as held-out images (a `Dataset`): for a few, as cam and report show."""
        images, labels, errors = _Decode(self, train=False)[(0, tuple(range(len(self))))]
        if images is None:
            raise NinError(errors[0])
        return Dataset(images, labels, self.classes)

    def sample(self, n: int = 1_000) -> torch.Tensor:
        """uint8 (n, C, size, size): `n` images spread evenly over the split, as tested (for `mean_std`)."""
        picked = torch.linspace(0, len(self) - 1, min(n, len(self))).long()
        return _Decode(self[picked], train=False, skip_bad=True)[(0, tuple(range(len(picked))))][0]


def stream_files(root: Path, classes: tuple[str, ...], files: list[tuple[Path, int]], channels: int,
                 size: int) -> Files:  # fmt: skip
    """The (file, label) pairs `files` under `root` as `Files` decoded to `channels` at `size`."""
    names = np.array([os.fsencode(f.relative_to(root)) for f, _ in files])  # the file system's bytes: any name
    return Files(str(root), names, torch.tensor([label for _, label in files]), classes, channels, size)


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[float, ...]:
    """The (left, top, right, bottom) RandomResizedCrop region of a `width` x `height` training image (up to 10
    draws, then the centre at the nearest allowed aspect ratio)."""
    area = width * height
    for _ in range(10):
        share, aspect = rng.uniform(*SCALE), math.exp(rng.uniform(*np.log(RATIO)))
        w, h = round(math.sqrt(share * area * aspect)), round(math.sqrt(share * area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            return (left, top, left + w, top + h)
    aspect = min(max(width / height, RATIO[0]), RATIO[1])
    w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    w, h = min(w, width), min(h, height)
    return ((width - w) // 2, (height - h) // 2, (width - w) // 2 + w, (height - h) // 2 + h)


def train_draft(size: int) -> int:
    """The side a training JPEG is decoded at no less than: the smallest crop (SCALE[0] of the area at the widest
    aspect) still has `size` pixels each way, so no crop is upsampled from a reduced-scale decode."""
    return math.ceil(size / math.sqrt(SCALE[0] * RATIO[0]))


def transform(img: Image.Image, channels: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A decoded training image -> uint8 (channels, size, size): the crop of `crop_box` resized (bilinear,
    antialiased, in one step), flipped left-right with probability 1/2."""
    img = img.convert("L" if channels == 1 else "RGB")
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=crop_box(img.width, img.height, rng))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, channels).permute(2, 0, 1)


class _Decode(torch.utils.data.Dataset):
    """What a worker holds: the split's names (no pixels). Key (epoch, indices) -> one decoded batch
    (uint8 images, labels, [skipped files' errors]), or with a bad image and no `skip_bad` (None, None, [error])."""

    def __init__(self, files: Files, train: bool, seed: int = 0, skip_bad: bool = False):
        self.files, self.train, self.seed, self.skip_bad = files, train, seed, skip_bad
        self.draft = train_draft(files.size) if train else round(files.size * CENTER)

    def __getitem__(self, key: tuple[int, tuple[int, ...]]) -> tuple:
        epoch, indices = key
        f, images, kept, errors = self.files, [], [], []
        for i in indices:
            rng = np.random.default_rng((self.seed, epoch, i)) if self.train else None  # this image's own draws
            try:
                img = open_image(Path(f.root, os.fsdecode(f.names[i])), draft=self.draft)  # JPEG decoded reduced
            except NinError as e:
                if not self.skip_bad:
                    return None, None, [str(e)]
                errors.append(str(e))
                continue
            held_out = rng is None  # held-out images: the run's preprocessing, as evaluate and predict apply it
            images.append(from_image(img, f.channels, f.size, "center") if held_out else
                          transform(img, f.channels, f.size, rng))  # fmt: skip
            kept.append(i)
        if not images:
            return torch.zeros(0, f.channels, f.size, f.size, dtype=torch.uint8), f.labels[:0], errors
        return torch.stack(images), f.labels[kept], errors

    def __len__(self) -> int:
        return len(self.files)


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity where the OS has one (Linux; os.cpu_count() is the
    host's count in a container), else the CPU count (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """The usable cores, shared among the ranks torchrun started on this machine (LOCAL_WORLD_SIZE): each rank
    starts its own workers."""
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class StreamBatches(Batches):
    """`Batches` of a `Files` split, decoded by `workers` processes (0: in this process): the same batches,
    order and shards as `Batches` would give of the same images in memory."""

    def __init__(self, files: Files, batch_size: int, device: torch.device, train: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, skip_bad: bool = False):  # fmt: skip
        self.labels, self.files, self.workers = files.labels, files, workers
        self.batch_size, self.size, self.device = batch_size, files.size, device
        self.shuffle, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.decode = _Decode(files, train, seed, skip_bad)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        parts = shard(len(self.labels), self.batch_size, epoch, start, self.shuffle, self.seed, self.rank,
                      self.world_size)  # fmt: skip
        keys = [(epoch, tuple(idx.tolist())) for idx in parts]
        # batch_size=None: each key is one batch, decoded whole by one worker; the loader's own generator, so
        # that starting it draws nothing from torch's global RNG (which a checkpoint restores for dropout)
        loader = DataLoader(self.decode, batch_size=None, sampler=keys, num_workers=self.workers,
                            prefetch_factor=PREFETCH if self.workers else None, generator=torch.Generator(),
                            pin_memory=self.device.type == "cuda")  # fmt: skip
        for images, labels, errors in loader:
            if images is None:
                raise NinError(f"{errors[0]}; or fix or remove it, or pass --skip-bad-images to skip "
                               "unreadable images")  # fmt: skip
            for e in errors:
                print(f"skipped {e} (--skip-bad-images)")
            x = images.to(self.device, non_blocking=True).float().div_(255)
            yield x.contiguous(memory_format=torch.channels_last), labels.to(self.device, non_blocking=True)


def batches_of(data: Dataset | Files, batch_size: int, size: int, device: torch.device, train: bool = False,
               seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
               skip_bad: bool = False) -> Batches:  # fmt: skip
    """Batches of a split in memory (`Batches`, shuffled when training) or streamed (`StreamBatches`)."""
    if isinstance(data, Files):
        return StreamBatches(data, batch_size, device, train, seed, rank, world_size,
                             workers or default_workers(), skip_bad)  # fmt: skip
    return Batches(data.images, data.labels, batch_size, size, device, train, seed, rank, world_size)
