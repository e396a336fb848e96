"""`--dataset folder`: your own images, one folder per class, decoded once and cached.

    DIR/train/<class>/*.png|jpg|jpeg|bmp|webp   (required)
    DIR/test/<class>/*.png|jpg|jpeg|bmp|webp    (optional; without it, --val-split N holds out a test split)

Class names are the sorted folder names under train/. Every image is brought to `size` x `size`
(bilinear, antialiased; a non-square image is squashed, as d2l's `Resize((s, s))` does) and decoded
into the same uint8 (N, C, H, W) tensors as the IDX data: grayscale images stay 1-channel, colour ones
3-channel, and a mix is brought to RGB. The decoded split is cached in ~/.cache/nin/folders/, keyed by
every file's name, size and modification time and by `size`, so a second run starts at once; changing,
adding or removing any file decodes again. Files with other suffixes (.txt, .DS_Store) are ignored.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from nin.data.download import cache_dir
from nin.data.images import FORMATS, GRAYSCALE, SUFFIXES, decode
from nin.data.types import Dataset
from nin.errors import NinError
from nin.io import atomic_torch_save

CACHE_FORMAT = "nin-folder-v2"  # v2: EXIF orientation, alpha composited, JPEG draft decoding


def load_folder(root: Path, split: str, size: int, skip_bad: bool = False) -> Dataset | None:
    """The `split` ('train' or 'test') of the image folder `root`, from the cache when no file changed;
    None for a missing test/ folder. An unreadable image is an error, or with `skip_bad` skipped and counted."""
    classes = classes_of(root)
    if not (root / split).is_dir():
        return None
    found = _classes(root / split)
    if unknown := sorted(set(found) - set(classes)):
        raise NinError(f"{root / split}: class folder(s) {', '.join(unknown)} are not in train/ "
                       f"({', '.join(classes)}); every test class must be a training class")  # fmt: skip
    files = [(f, classes.index(c)) for c in found for f in _images(root / split / c)]
    listing = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f, _ in files]
    key = hashlib.sha256(repr((CACHE_FORMAT, size, skip_bad, classes, listing)).encode()).hexdigest()[:24]
    cache = cache_dir() / "folders" / f"{key}.pt"
    if cache.is_file():
        try:
            state = torch.load(cache, weights_only=True)
            return Dataset(state["images"], state["labels"], tuple(state["classes"]))
        except Exception:  # a damaged cache file is only a cache: decode again
            pass
    print(f"decoding {len(files):,} images of {root / split} at {size}x{size} (once: then cached in {cache.parent})")
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow releases the GIL while it decodes and resizes
        decoded = list(pool.map(lambda f: _decode(f[0], size, skip_bad), files))
    kept = [(img, label) for img, (_, label) in zip(decoded, files) if img is not None]
    if skipped := len(files) - len(kept):
        print(f"skipped {skipped:,} unreadable image(s) of {root / split} (--skip-bad-images)")
    if not kept:
        raise NinError(f"{root / split}: none of its {len(files):,} images could be read")
    channels = max(img.shape[0] for img, _ in kept)  # a mix of grayscale and colour: all RGB
    images = torch.stack([img.expand(channels, -1, -1) for img, _ in kept])
    labels = torch.tensor([label for _, label in kept])
    try:
        atomic_torch_save({"images": images, "labels": labels, "classes": list(classes)}, cache)
    except OSError as e:  # an unwritable cache only costs decoding again next time
        print(f"note: could not cache the decoded images in {cache.parent} ({e.strerror})")
    return Dataset(images, labels, classes)


def classes_of(root: Path) -> tuple[str, ...]:
    """The class names of the image folder `root`: its train/ subfolders, sorted."""
    if not (root / "train").is_dir():
        raise NinError(f"{root}: no train/ folder; a folder dataset is {root}/train/<class>/*.png "
                       "(and optionally test/<class>/...), one folder per class")  # fmt: skip
    return _classes(root / "train")


def channels_of(root: Path) -> int:
    """1 if every training image of `root` is grayscale, else 3: read from the files' headers, nothing decoded."""
    for c in classes_of(root):
        for f in _images(root / "train" / c):
            with Image.open(f, formats=FORMATS) as img:
                if img.mode not in GRAYSCALE:
                    return 3
    return 1


def _classes(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise NinError(f"{folder}: no class folders; put each class's images in {folder}/<class name>/")
    for c in classes:
        if not _images(folder / c):
            raise NinError(f"{folder / c}: an empty class folder (no {', '.join(SUFFIXES)} files); add images or "
                           "remove the folder")  # fmt: skip
    return classes


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES and not f.name.startswith("."))


def _decode(path: Path, size: int, skip_bad: bool) -> torch.Tensor | None:
    """One image as uint8 (C, size, size): C = 1 for grayscale, 3 for colour (None: skipped)."""
    try:
        return decode(path, None, size)
    except NinError as e:
        if skip_bad:
            return None
        raise NinError(f"{e}; or fix or remove it, or pass --skip-bad-images to skip unreadable images") from None
