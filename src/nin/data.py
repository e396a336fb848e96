"""Datasets: verified files read in their raw formats, kept in memory as uint8, resized per batch on the device.

Like airbench's loader there is no DataLoader and no worker process: Fashion-MNIST is 55 MB of uint8,
CIFAR 184 MB, and a batch is an index into it, converted to float and resized where the model runs.
That is d2l's `Resize(resize)` + `ToTensor()` done for 256 images at once instead of one by one.

Every dataset is a `Dataset`: uint8 images (N, C, H, W), int64 labels and class names. Fashion-MNIST
and MNIST are IDX files (bundled with the repository); CIFAR-10/100 are the official *binary* archives
(fixed-size records, nothing unpickled), downloaded on first use; `folder` is a class-per-folder tree
of PNG/JPEG files (nin/folder.py).

>>> train, test = nin.data.load("fashion-mnist")
>>> train.images.shape, test.classes[test.labels[0]]
(torch.Size([60000, 1, 28, 28]), 'Ankle boot')
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import json
import math
import os
import shutil
import struct
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nin.errors import NinError
from nin.io import atomic_write_bytes

if TYPE_CHECKING:
    from nin.config import Config

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
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder")
REPO_DATA = Path(__file__).resolve().parents[2] / "data"  # the repository's bundled copies
BUNDLED = REPO_DATA / "fashion-mnist"


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset: uint8 `images` (N, C, H, W), int64 `labels` (N,), and the `classes` they name."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: slice | torch.Tensor) -> Dataset:
        return Dataset(self.images[index], self.labels[index], self.classes)

    def with_channels(self, channels: int) -> Dataset:
        """The images with `channels` channels: gray repeated into RGB, or RGB made gray as Pillow does (ITU-R
        601-2 luma), so that a split with other images than the training split's still fits the network."""
        x = self.images
        if x.shape[1] == channels:
            return self
        if channels == 3:
            return Dataset(x.expand(-1, 3, -1, -1).contiguous(), self.labels, self.classes)
        luma = torch.tensor([299, 587, 114], dtype=torch.int32).reshape(1, 3, 1, 1)
        gray = ((x.int() * luma).sum(dim=1, keepdim=True) + 500) // 1000
        return Dataset(gray.to(torch.uint8), self.labels, self.classes)


@dataclass(frozen=True)
class Spec:
    """What a trained run knows of its data without the data, saved in its checkpoint: the dataset's name,
    class names, channels and the side length of its stored images (and a folder dataset's path)."""

    dataset: str = "fashion-mnist"
    classes: tuple[str, ...] = CLASS_NAMES
    channels: int = 1
    size: int = 28
    data_dir: str | None = None

    @staticmethod
    def of(name: str, data: Dataset, data_dir: Path | None = None) -> Spec:
        path = str(Path(data_dir).resolve()) if data_dir else None  # remembered: later commands need no --data-dir
        return Spec(name, data.classes, data.images.shape[1], data.images.shape[-1], path)

    def check(self, data: Dataset, source: str) -> Dataset:
        """`data` in this spec's format, or one error if it is not the data this spec describes (`source`
        names it): another dataset behind the same folder changes the class names or their order."""
        if data.classes != self.classes:
            raise NinError(f"{source}: the data's classes ({', '.join(data.classes[:12])}"
                           f"{', ...' if len(data.classes) > 12 else ''}) are not the ones the run was trained on "
                           f"({', '.join(self.classes[:12])}{', ...' if len(self.classes) > 12 else ''}); point "
                           "--data-dir at the data the run was trained on")  # fmt: skip
        return data.with_channels(self.channels)

    @staticmethod
    def from_dict(values: dict | None) -> Spec:
        """A checkpoint's `data` entry; checkpoints from before datasets existed are Fashion-MNIST."""
        values = dict(values or {})
        return Spec(**{**values, "classes": tuple(values.get("classes", CLASS_NAMES))})

    def to_dict(self) -> dict:
        return {**self.__dict__, "classes": list(self.classes)}


def load(name: str = "fashion-mnist", data_dir: str | Path | None = None, image_size: int = 32,
         skip_bad_images: bool = False) -> tuple[Dataset, Dataset | None]:  # fmt: skip
    """(train, test) of the dataset `name`, checked: `fashion-mnist`, `mnist` (bundled), `cifar10`, `cifar100`
    (downloaded into `data_dir` on first use) or `folder` (`data_dir`/train/<class>/*, `data_dir`/test/<class>/*;
    test is None without a test folder). `data_dir` defaults to $NIN_DATA_DIR/<name>, else the bundled copy,
    else ~/.cache/nin/<name>. `image_size` and `skip_bad_images` are for `folder` (see nin/folder.py).

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
        from nin.folder import load_folder

        if data_dir is None:
            raise NinError("--dataset folder needs --data-dir DIR: a folder with train/<class>/ (and test/<class>/) "
                           "holding PNG or JPEG images")  # fmt: skip
        return load_folder(Path(data_dir), split, image_size, skip_bad_images)
    folder = Path(data_dir) if data_dir else default_data_dir(name)
    if name in IDX:
        return _load_idx(name, folder, split)
    return _load_cifar(name, folder, split)


def shape_of(name: str, data_dir: str | Path | None = None) -> tuple[int, int]:
    """(channels, classes) of a dataset without loading it; for `folder`, from its train/ class folders and
    the headers of their images."""
    if name == "folder":
        from nin.folder import channels_of, classes_of

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
    return _cache_dir() / name


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nin"


def load_fashion_mnist(split: str, data_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split,
    checksum-verified; from `data_dir`, else as `load` finds it.

    >>> images, labels = nin.load_fashion_mnist("test")
    >>> images.shape, images.dtype, nin.CLASS_NAMES[labels[0]]
    (torch.Size([10000, 28, 28]), torch.uint8, 'Ankle boot')
    """
    data = load_split("fashion-mnist", split, data_dir)
    return data.images[:, 0], data.labels


# ---- IDX files (Fashion-MNIST, MNIST) ------------------------------------------------------------------


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


def _load_idx(name: str, folder: Path, split: str) -> Dataset:
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


def verify(path: Path, content: bytes, expected: str, fix: str) -> None:
    """Check the SHA-256 of `content` (what `path` holds); files that passed are remembered by size and mtime."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, expected]
    cache_file = _cache_dir() / "verified.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key) == stamp:
        return
    digest = _sha256(content)
    if digest != expected:
        raise NinError(f"{path}: checksum mismatch (SHA-256 {digest[:12]}..., expected {expected[:12]}...): the "
                       f"file is corrupted or not the official one. {fix}")  # fmt: skip
    cache[key] = stamp
    try:
        atomic_write_bytes(cache_file, json.dumps(cache, indent=0).encode())
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _mirror(default: str) -> str:
    return os.environ.get("NIN_DATA_MIRROR", default).rstrip("/") + "/"


def _fetch(url: str, missing: str) -> bytes:
    """The bytes at `url`, or one error that says `missing` and what to do."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise NinError(f"{missing} could not be downloaded from {url} ({getattr(e, 'reason', e)})") from None


def _download_idx(name: str, path: Path) -> None:
    """Fetch one IDX file ($NIN_DATA_MIRROR overrides the mirror), verify it, rename it into place."""
    url = _mirror(IDX[name].url) + path.name
    print(f"downloading {url} -> {path}")
    try:
        data = _fetch(url, f"{path} is missing and")
    except NinError as e:
        raise NinError(f"{e}. Copy the four {name} .gz files ({', '.join(IDX[name].sha256)}) into {path.parent}, "
                       f"or point --data-dir at a folder that has them (NIN_DATA_DIR: at one with a {name}/ "
                       "folder).") from None  # fmt: skip
    expected = IDX[name].sha256[path.name]
    try:
        digest = _sha256(gzip.decompress(data))
    except (OSError, EOFError, zlib.error):
        digest = "not gzip"
    if digest != expected:
        raise NinError(f"{url}: the downloaded file's content has SHA-256 {digest[:12]}..., expected "
                       f"{expected[:12]}...; nothing was saved. Try again later or copy the official files "
                       "by hand.")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


# ---- CIFAR-10 / CIFAR-100: the official binary archives ------------------------------------------------


@dataclass(frozen=True)
class Archive:
    file: str
    md5: str  # the dataset authors' own checksum, from https://www.cs.toronto.edu/~kriz/cifar.html
    size: int  # bytes
    folder: str  # the one folder inside the archive
    splits: dict[str, tuple[str, ...]]  # split -> its .bin files
    label_bytes: int  # bytes before each image: CIFAR-100 has a coarse, then a fine label
    names: str  # the class names, one per line (CIFAR-100: the fine ones)


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
RECORD = 3 * 32 * 32  # each image: 1024 red, 1024 green, 1024 blue bytes, each a 32x32 row-major plane
ARCHIVES = {
    "cifar10": Archive("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", 170_052_171,
                       "cifar-10-batches-bin", {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                                                "test": ("test_batch.bin",)}, 1, "batches.meta.txt"),
    "cifar100": Archive("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", 168_513_733,
                        "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)}, 2,
                        "fine_label_names.txt"),
}  # fmt: skip


def _load_cifar(name: str, folder: Path, split: str) -> Dataset:
    """One split of CIFAR-10/100, extracted from the official binary archive in `folder` on first use."""
    a = ARCHIVES[name]
    extracted = folder / a.folder
    if not extracted.is_dir():
        extract(name, folder)
    records = []
    for file in a.splits[split]:
        path = extracted / file
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise NinError(f"{path}: cannot read it ({e.strerror}); delete {extracted} to extract it again") from None
        records.append(_records(name, raw, path))
    data = torch.cat(records)
    labels = data[:, a.label_bytes - 1].long()  # CIFAR-100: the fine label, the second byte
    classes = _class_names(extracted / a.names)
    if int(labels.max()) >= len(classes):
        raise NinError(f"{extracted}: a label is {int(labels.max())}, but {a.names} names {len(classes)} classes; "
                       f"delete {extracted} and the archive, and download it again")  # fmt: skip
    return Dataset(data[:, a.label_bytes :].reshape(-1, 3, 32, 32).contiguous(), labels, classes)


def _records(name: str, raw: bytes, path: Path) -> torch.Tensor:
    size = ARCHIVES[name].label_bytes + RECORD
    if not raw or len(raw) % size:
        raise NinError(f"{path}: {len(raw)} bytes is not a whole number of {name} records of {size} bytes: "
                       "the file is damaged or not from the official binary archive")  # fmt: skip
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, size)


def _class_names(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def extract(name: str, folder: Path) -> Path:
    """Download `name`'s archive into `folder` if missing, check its size and MD5, and extract the files nin
    reads into `folder`/<its folder>, atomically: into a temporary folder renamed into place once complete."""
    a = ARCHIVES[name]
    archive = folder / a.file
    url = _mirror(CIFAR_URL) + a.file
    if not archive.exists():
        print(f"downloading {url} -> {archive} ({a.size / 1e6:.0f} MB)")
        try:
            data = _fetch(url, f"{name}: {a.file} is not in {folder} and")
        except NinError as e:
            raise NinError(f"{e}. Download {url} on a machine that can, and put it in {folder} (or point --data-dir "
                           f"at a folder that has it; NIN_DATA_DIR: one with a {name}/ folder).") from None  # fmt: skip
        _check_archive(name, data, url, "nothing was saved; try again later or download it by hand")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(archive, data)
    else:
        fix = f"delete it and run again, or put the official {a.file} there"
        _check_archive(name, archive.read_bytes(), archive, fix)
    tmp = folder / f".{a.folder}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with tarfile.open(archive, "r:gz") as tar:
            # only the known member names, written by us: nothing in the archive chooses a path
            for file in (*a.splits["train"], *a.splits["test"], a.names):
                member = tar.getmember(f"{a.folder}/{file}")
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise KeyError(file)
                with source, open(tmp / file, "wb") as target:
                    shutil.copyfileobj(source, target)
                if file.endswith(".bin"):
                    _records(name, (tmp / file).read_bytes(), archive / member.name)
        try:
            os.replace(tmp, folder / a.folder)
        except OSError:  # another process (a torchrun rank) extracted it first: theirs is as good
            if not (folder / a.folder).is_dir():
                raise
    except (tarfile.TarError, EOFError, zlib.error, KeyError) as e:
        raise NinError(f"{archive}: not a complete {name} binary archive ({type(e).__name__}: {e}); delete it and "
                       f"download {url} again. Nothing was extracted.") from None  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / a.folder


def _check_archive(name: str, data: bytes, source: object, fix: str) -> None:
    a = ARCHIVES[name]
    if len(data) != a.size or (digest := hashlib.md5(data, usedforsecurity=False).hexdigest()) != a.md5:
        found = f"{len(data):,} bytes" if len(data) != a.size else f"MD5 {digest}"
        raise NinError(f"{source}: not the official {a.file} ({found}; expected {a.size:,} bytes with MD5 "
                       f"{a.md5}, the authors' checksum); {fix}")  # fmt: skip


# ---- splits, resizing, augmentation, batches -----------------------------------------------------------

VAL_SEED = 20_141_312  # fixes the validation split: the same images for every --seed (NiN's arXiv number)


def split(data: Dataset, n: int) -> tuple[Dataset, Dataset]:
    """(training, validation): `n` images drawn at random with a fixed seed are held out for validation."""
    if not 0 <= n < len(data):
        raise NinError(f"--val-split {n}: the training set has {len(data):,} images; hold out fewer")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(VAL_SEED))
    return data[order[n:].sort().values], data[order[:n].sort().values]


def splits(config: Config, data_dir: str | Path | None = None) -> tuple[Dataset, Dataset | None, Dataset]:
    """(training, validation or None, test) as `config` cuts its dataset. A folder dataset without a test
    folder is tested on the `val_split` images it holds out (and then has no separate validation set)."""
    train = load_split(config.dataset, "train", data_dir, config.image_size, config.skip_bad_images)
    val = None
    if config.val_split:
        train, val = split(train, config.val_split)
    test = load_split(config.dataset, "test", data_dir, config.image_size, config.skip_bad_images)
    if test is None:
        if val is None:
            raise NinError(f"{data_dir}: no test/ folder; add one, or hold out training images to test on "
                           "with --val-split N (nin train, nin sweep)")  # fmt: skip
        test, val = val, None
    test = test.with_channels(train.images.shape[1])  # a gray training set and a colour test image, or so
    if config.train_limit:
        train = train[: config.train_limit]
    if config.test_limit:
        test = test[: config.test_limit]
    return train, val, test


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


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W), or (B, H, W) for one channel -> float (B, C, size, size) in [0, 1], as PIL
    bilinear resize + ToTensor.

    PIL resizes uint8 images and rounds to uint8; we round too, so values match it within 1/255.
    antialias=True makes downscaling match PIL as well (for upscaling it changes nothing).
    """
    x = (images.unsqueeze(1) if images.dim() == 3 else images).float()
    if size != images.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x.div_(255)


def augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A batch with each image flipped left-right with probability 1/2 (`flip`), shifted by up to 2 pixels
    each way with black filling in (`crop`, the padded random crop of CIFAR training; for digits, which a
    flip would change), both (`flip-crop`), and then also half of them with a random rectangle replaced by
    noise (`flip-crop-erase`: random erasing); `none` returns it as it is. Drawn on the batch's device from
    torch's global RNG, which checkpoints hold, so a resumed run draws the same."""
    if kind == "none":
        return x
    b, c, h, w = x.shape
    if "flip" in kind:
        x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    if "crop" in kind:
        pad = 2
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), device=x.device)
        rows, cols = torch.arange(h, device=x.device) + dy, torch.arange(w, device=x.device) + dx
        batch, channel = torch.arange(b, device=x.device), torch.arange(c, device=x.device)
        x = padded[batch[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None],
                   cols[:, None, None, :]]  # fmt: skip
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
