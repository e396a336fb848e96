"""`--dataset folder`: your own images, one folder per class (torchvision's `ImageFolder` layout), decoded once
and cached, or streamed (nin/data/stream.py).

    DIR/train/<class>/**/*.png|jpg|jpeg|bmp|webp   (required; images in nested subfolders too, any case: .JPEG)
    DIR/test/<class>/**/...  or  DIR/val/<class>/**/...   (optional: the held-out split, see below)

The held-out split is test/ if there is one, else val/ (ImageNet's and Imagenette's layout): with both, test/
is tested on and val/ is not read (a line says so); with neither, --val-split N holds out training images.
Class names are the sorted folder names under train/ (class index i is the i-th, as `ImageFolder.class_to_idx`
gives them). In memory, every image is brought to `size` x `size`
(bilinear, antialiased; a non-square image is squashed, as d2l's `Resize((s, s))` does) and decoded
into the same uint8 (N, C, H, W) tensors as the IDX data: grayscale images stay 1-channel, colour ones
3-channel, and a mix is brought to RGB. The decoded split is cached in ~/.cache/nin/folders/, keyed by
every file's name, size and modification time and by `size`, so a second run starts at once; changing,
adding or removing any file decodes again. Files with other suffixes (.txt, .DS_Store) are ignored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from nin.data.download import cache_dir
from nin.data.images import DAMAGED, FORMATS, GRAYSCALE, SUFFIXES
from nin.data.preprocess import prepare
from nin.data.stream import Files, stream_files, usable_cores
from nin.data.types import Dataset
from nin.errors import NinError
from nin.io import atomic_torch_save

CACHE_FORMAT = "nin-folder-v2"  # v2: EXIF orientation, alpha composited, JPEG draft decoding


def load_folder(root: Path, split: str, size: int, skip_bad: bool = False) -> Dataset | None:
    """The `split` ('train' or 'test': the held-out folder) of the image folder `root`, from the cache when no
    file changed; None without a held-out folder. An unreadable image is an error, or with `skip_bad` skipped and
    counted."""
    found = listing(root, split)
    if found is None:
        return None
    classes, files = found
    split = folder_of(root, split)
    stats = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f, _ in files]
    key = hashlib.sha256(repr((CACHE_FORMAT, size, skip_bad, classes, stats)).encode()).hexdigest()[:24]
    cache = cache_dir() / "folders" / f"{key}.pt"
    if cache.is_file():
        try:
            state = torch.load(cache, weights_only=True)
            return Dataset(state["images"], state["labels"], tuple(state["classes"]))
        except Exception:  # a damaged cache file is only a cache: decode again
            pass
    print(f"decoding {len(files):,} images of {root / split} at {size}x{size} (once: then cached in {cache.parent})")
    with ThreadPoolExecutor(usable_cores()) as pool:  # Pillow releases the GIL while it decodes
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


def stream_folder(root: Path, split: str, size: int) -> Files | None:
    """The `split` of `root` as `Files`, streamed at `size` (see nin/data/stream.py); None without a held-out
    folder. Nothing is decoded here but the headers `channels_of` reads."""
    found = listing(root, split)
    return None if found is None else stream_files(root, *found, channels_of(root), size)


def decoded_bytes(root: Path, size: int) -> tuple[int, int]:
    """(training images of `root`, bytes they take decoded into memory at `size`, as RGB, while stacked)."""
    n = len(listing(root, "train")[1])  # type: ignore[index]
    return n, 2 * n * 3 * size * size  # the decoded images and their stacked copy


def folder_of(root: Path, split: str) -> str:
    """The folder that holds `split` ('train' or 'test'): train/, and for 'test' test/, else val/ (else 'test')."""
    if split == "train" or (root / "test").is_dir() or not (root / "val").is_dir():
        return split
    return "val"


def listing(root: Path, split: str) -> tuple[tuple[str, ...], list[tuple[Path, int]]] | None:
    """(class names, every (image file, class index) of `split`, sorted), or None without a held-out folder."""
    classes = classes_of(root)
    folder = root / folder_of(root, split)
    if not folder.is_dir():
        return None
    if split == "test" and folder.name == "test" and (root / "val").is_dir():
        print(f"{root} has test/ and val/: testing on test/ (val/ is not read)")
    found = _classes(folder)
    if unknown := sorted(set(found) - set(classes)):
        raise NinError(f"{folder}: class folder(s) {', '.join(unknown)} are not in train/ "
                       f"({', '.join(classes)}); every held-out class must be a training class")  # fmt: skip
    return classes, [(f, classes.index(c)) for c in found for f in _images(folder / c)]


def classes_of(root: Path) -> tuple[str, ...]:
    """The class names of the image folder `root`: its train/ subfolders, sorted."""
    if not (root / "train").is_dir():
        raise NinError(f"{root}: no train/ folder; a folder dataset is {root}/train/<class>/*.png "
                       "(and optionally test/<class>/... or val/<class>/...), one folder per class")  # fmt: skip
    return _classes(root / "train")


def channels_of(root: Path) -> int:
    """1 if every training image of `root` is grayscale, else 3: read from the files' headers, nothing decoded.
    An unreadable file says nothing of the channels and is passed over here: training names it (or skips it,
    --skip-bad-images), and `nin summary` and `nin sweep` do not stop at it."""
    for c in classes_of(root):
        for f in _walk(root / "train" / c):  # in any order: the first colour image decides
            try:
                with Image.open(f, formats=FORMATS) as img:
                    if img.mode not in GRAYSCALE:
                        return 3
            except DAMAGED:  # a damaged file, as images.open_image knows them
                continue
    return 1


def _classes(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise NinError(f"{folder}: no class folders; put each class's images in {folder}/<class name>/")
    for c in classes:
        if next(_walk(folder / c), None) is None:
            raise NinError(f"{folder / c}: an empty class folder (no {', '.join(SUFFIXES)} files); add images or "
                           "remove the folder")  # fmt: skip
    return classes


def _images(folder: Path) -> list[Path]:
    """The image files under `folder`, in nested subfolders too (hidden files and folders left out), sorted."""
    return sorted(_walk(folder))


def _walk(folder: Path) -> Iterator[Path]:
    """The image files under `folder` as the file system lists them (one walk; nothing sorted)."""
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (Path(parent, f) for f in files if os.path.splitext(f)[1].lower() in SUFFIXES and f[0] != ".")


def _decode(path: Path, size: int, skip_bad: bool) -> torch.Tensor | None:
    """One image as uint8 (C, size, size): C = 1 for grayscale, 3 for colour (None: skipped)."""
    try:
        return prepare(path, None, size)  # squashed: the preprocessing's step 1 (nin/data/preprocess.py)
    except NinError as e:
        if skip_bad:
            return None
        raise NinError(f"{e}; or fix or remove it, or pass --skip-bad-images to skip unreadable images") from None
