"""Fashion-MNIST: verified IDX files, kept in memory as uint8, resized per batch on the device.

Like airbench's loader there is no DataLoader and no worker process: the whole dataset is 55 MB
of uint8, and a batch is an index into it, converted to float and resized where the model runs.
That is d2l's `Resize(resize)` + `ToTensor()` done for 256 images at once instead of one by one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import math
import os
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from nin.errors import NinError
from nin.io import atomic_write_bytes

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# name -> (SHA-256, IDX magic number, shape)
FILES = {
    "train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        0x803,
        (60000, 28, 28),
    ),
    "train-labels-idx1-ubyte.gz": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 0x801, (60000,)),
    "t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        0x803,
        (10000, 28, 28),
    ),
    "t10k-labels-idx1-ubyte.gz": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 0x801, (10000,)),
}
SPLITS = {"train": "train", "test": "t10k"}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's official mirror
BUNDLED = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"  # the repository's copy


def default_data_dir() -> Path:
    """$NIN_DATA_DIR, else the copy bundled with the repository, else ~/.cache/nin/fashion-mnist."""
    if os.environ.get("NIN_DATA_DIR"):
        return Path(os.environ["NIN_DATA_DIR"])
    if BUNDLED.is_dir():
        return BUNDLED
    return _cache_dir() / "fashion-mnist"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nin"


def load_fashion_mnist(split: str, data_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split, checksum-verified;
    from `data_dir`, else $NIN_DATA_DIR, else the copy bundled with the repository (downloaded if missing).

    >>> images, labels = nin.load_fashion_mnist("test")
    >>> images.shape, images.dtype, nin.CLASS_NAMES[labels[0]]
    (torch.Size([10000, 28, 28]), torch.uint8, 'Ankle boot')
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    prefix = SPLITS[split]
    images = _load(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = _load(data_dir / f"{prefix}-labels-idx1-ubyte.gz").long()
    return images, labels


def _load(path: Path) -> torch.Tensor:
    """Parse one IDX gzip file (checking gzip, magic number and size), then verify its SHA-256."""
    if not path.exists():
        download(path)
    blob = path.read_bytes()
    _, magic, shape = FILES[path.name]
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError) as e:  # BadGzipFile is an OSError
        raise NinError(f"{path}: not a readable gzip file ({e}). {_FIX.format(dir=path.parent)}") from None
    header = 4 + 4 * len(shape)
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        raise NinError(f"{path}: IDX magic number is {found!r}, expected {magic:#x}. {_FIX.format(dir=path.parent)}")
    dims = struct.unpack(f">{len(shape)}I", raw[4:header]) if len(raw) >= header else ()
    if dims != shape or len(raw) != header + math.prod(shape):
        raise NinError(
            f"{path}: wrong size: header says {dims}, {len(raw) - header} data bytes; expected shape {shape}. "
            + _FIX.format(dir=path.parent)
        )
    verify(path, blob)
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


_FIX = (
    "Delete it and run again to download a fresh copy, or put the official Fashion-MNIST file in {dir} "
    "(or point --data-dir / NIN_DATA_DIR elsewhere)."
)


def verify(path: Path, blob: bytes) -> None:
    """Check the SHA-256 of `blob` (the file's bytes); files that passed are remembered by size and mtime."""
    expected = FILES[path.name][0]
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, expected]
    cache_file = _cache_dir() / "verified.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key) == stamp:
        return
    digest = _sha256(blob)
    if digest != expected:
        raise NinError(
            f"{path}: checksum mismatch (SHA-256 {digest[:12]}..., expected {expected[:12]}...): the file is "
            f"corrupted or not the official one. {_FIX.format(dir=path.parent)}"
        )
    cache[key] = stamp
    try:
        atomic_write_bytes(cache_file, json.dumps(cache, indent=0).encode())
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def download(path: Path) -> None:
    """Fetch one file from the mirror ($NIN_DATA_MIRROR overrides it), verify it, rename it into place."""
    url = os.environ.get("NIN_DATA_MIRROR", MIRROR).rstrip("/") + "/" + path.name
    print(f"downloading {url} -> {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise NinError(
            f"{path} is missing and could not be downloaded from {url} ({getattr(e, 'reason', e)}). "
            f"Copy the four Fashion-MNIST .gz files ({', '.join(FILES)}) into {path.parent}, "
            "or point --data-dir / NIN_DATA_DIR at a folder that has them."
        ) from None
    if (digest := _sha256(data)) != FILES[path.name][0]:
        raise NinError(
            f"{url}: downloaded file has SHA-256 {digest[:12]}..., expected {FILES[path.name][0][:12]}...; "
            "nothing was saved. Try again later or copy the official files by hand."
        )
    atomic_write_bytes(path, data)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, size, size) in [0, 1], as PIL bilinear resize + ToTensor.

    PIL resizes uint8 images and rounds to uint8; we round too, so values match it within 1/255.
    antialias=True makes downscaling match PIL as well (for upscaling it changes nothing).
    """
    x = images.unsqueeze(1).float()
    if size != images.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x.div_(255)


VAL_SEED = 20_141_312  # fixes the validation split: the same images for every --seed (NiN's arXiv number)


def split(
    images: torch.Tensor, labels: torch.Tensor, n: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(training, validation): `n` images drawn at random with a fixed seed are held out for validation."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(VAL_SEED))
    keep, held = order[n:].sort().values, order[:n].sort().values
    return (images[keep], labels[keep]), (images[held], labels[held])


def augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A batch with each image flipped left-right with probability 1/2 (`flip`), and also shifted by
    up to 2 pixels each way with black filling in (`flip-crop`, the padded random crop of CIFAR
    training), and then also half of them with a random rectangle replaced by noise (`flip-crop-erase`:
    random erasing); `none` returns it as it is. Drawn on the batch's device from torch's global RNG,
    which checkpoints hold, so a resumed run draws the same."""
    if kind == "none":
        return x
    b, _, h, w = x.shape
    x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    if kind in ("flip-crop", "flip-crop-erase"):
        pad = 2
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), device=x.device)
        rows, cols = torch.arange(h, device=x.device) + dy, torch.arange(w, device=x.device) + dx
        x = padded[torch.arange(b, device=x.device)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]
        x = x.unsqueeze(1)
    if kind == "flip-crop-erase":
        x = random_erase(x)
    return x.contiguous(memory_format=torch.channels_last)


def random_erase(x: torch.Tensor, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:  # fmt: skip
    """Random erasing (Zhong et al., 2017), batched: with probability `p` an image gets one rectangle
    of uniform noise, covering a random share `area` of it with aspect ratio (height / width) drawn
    log-uniformly from `ratio`. A rectangle that would not fit is clipped to the image (the paper
    draws again instead)."""
    b, _, h, w = x.shape
    u = torch.rand(5, b, device=x.device)
    share = area[0] + (area[1] - area[0]) * u[0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    eh = (share * h * w * aspect).sqrt().round().clamp(1, h)
    ew = (share * h * w / aspect).sqrt().round().clamp(1, w)
    top, left = (u[2] * (h - eh + 1)).floor(), (u[3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))  # fmt: skip
    mask = (inside & (u[4] < p)[:, None, None]).unsqueeze(1)
    return torch.where(mask, torch.rand_like(x), x)


class Batches:
    """Minibatches of (float images resized to `size`, labels) drawn from uint8 tensors.

    With `shuffle`, each epoch has its own permutation, derived from (seed, epoch) alone, so any
    epoch's order can be recreated, and a resumed run can skip the batches it already trained on.
    The last partial batch is kept, as in d2l's DataLoader. Under torchrun every rank draws the same
    global batch and takes its part of it (`rank` of `world_size` near-equal parts), so N ranks
    together train on exactly the batches of a single process.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        size: int,
        device: torch.device,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.size, self.device = batch_size, size, device
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def global_batch_len(self, step: int) -> int:
        """Examples in batch `step` over all ranks together."""
        return min(self.batch_size, len(self.labels) - step * self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, from batch number `start` on."""
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(start * self.batch_size, n, self.batch_size):
            idx = order[i : i + self.batch_size].tensor_split(self.world_size)[self.rank]
            x = resize(self.images[idx], self.size)
            # channels_last: oneDNN/cuDNN convolutions run in NHWC; 1.1-1.4x per step on a 2-core EPYC
            yield x.contiguous(memory_format=torch.channels_last), self.labels[idx]
