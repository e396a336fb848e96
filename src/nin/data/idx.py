"""IDX files (Fashion-MNIST, MNIST): parsed, checked (magic number, shape, SHA-256) and downloaded if missing."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from nin.data.download import fetch, mirror, sha256, verify
from nin.data.types import CLASS_NAMES, Dataset
from nin.errors import NinError
from nin.io import atomic_write_bytes


@dataclass(frozen=True)
class Idx:
    classes: tuple[str, ...]
    url: str  # where the four .gz files are downloaded from
    sha256: dict[str, str]  # file -> SHA-256 of its decompressed content (so any gzip of it passes)


IDX_SHAPES = {"train": (60000, 28, 28), "t10k": (10000, 28, 28)}
IDX = {
    # Zalando's official mirror; checksums of the decompressed official release (data/fashion-mnist/README.md)
    "fashion-mnist": Idx(CLASS_NAMES, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    }),
    # the PyTorch project's mirror of LeCun's files (torchvision's first choice); checksums from
    # data/mnist/README.md (the decompressed IDX files: LeCun's .gz and ours both pass)
    "mnist": Idx(tuple("0123456789"), "https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }),
}  # fmt: skip


def load_idx(name: str, folder: Path, split: str) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(name, folder / f"{prefix}-images-idx3-ubyte.gz", 0x803, IDX_SHAPES[prefix])
    labels = _read_idx(name, folder / f"{prefix}-labels-idx1-ubyte.gz", 0x801, IDX_SHAPES[prefix][:1])
    return Dataset(images.unsqueeze(1), labels.long(), IDX[name].classes)


def _read_idx(name: str, path: Path, magic: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Parse one gzipped IDX file (checking gzip, magic number and size), then verify its content's SHA-256."""
    if not path.exists():
        _download_idx(name, path)
    fix = _idx_fix(name, path.parent)
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise NinError(f"{path}: not a readable gzip file ({e}). {fix}") from None
    header = 4 + 4 * len(shape)
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        raise NinError(f"{path}: IDX magic number is {found!r}, expected {magic:#x}. {fix}")
    dims = struct.unpack(f">{len(shape)}I", raw[4:header]) if len(raw) >= header else ()
    if dims != shape or len(raw) != header + math.prod(shape):
        raise NinError(
            f"{path}: wrong size: header says {dims}, {len(raw) - header} data bytes; expected shape {shape}. {fix}"
        )
    verify(path, raw, IDX[name].sha256[path.name], fix)
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _idx_fix(name: str, folder: Path) -> str:
    return (f"Delete it and run again to download a fresh copy, or put the official {name} file in {folder} "
            "(or point --data-dir / NIN_DATA_DIR elsewhere).")  # fmt: skip


def _download_idx(name: str, path: Path) -> None:
    """Fetch one IDX file ($NIN_DATA_MIRROR overrides the mirror), verify it, rename it into place."""
    url = mirror(IDX[name].url) + path.name
    print(f"downloading {url} -> {path}")
    try:
        data = fetch(url, f"{path} is missing and")
    except NinError as e:
        raise NinError(f"{e}. Copy the four {name} .gz files ({', '.join(IDX[name].sha256)}) into {path.parent}, "
                       f"or point --data-dir at a folder that has them (NIN_DATA_DIR: at one with a {name}/ "
                       "folder).") from None  # fmt: skip
    expected = IDX[name].sha256[path.name]
    try:
        digest = sha256(gzip.decompress(data))
    except (OSError, EOFError, zlib.error):
        digest = "not gzip"
    if digest != expected:
        raise NinError(f"{url}: the downloaded file's content has SHA-256 {digest[:12]}..., expected "
                       f"{expected[:12]}...; nothing was saved. Try again later or copy the official files "
                       "by hand.")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
