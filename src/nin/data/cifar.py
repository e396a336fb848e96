"""CIFAR-10 / CIFAR-100 from the official *binary* archives: fixed-size records, nothing unpickled."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from nin.data.download import fetch, mirror
from nin.data.types import Dataset
from nin.errors import NinError
from nin.io import atomic_write_bytes


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
STALE = 3600  # seconds: a temporary folder or file of an extraction or download untouched this long was left by a kill
RECORD = 3 * 32 * 32  # each image: 1024 red, 1024 green, 1024 blue bytes, each a 32x32 row-major plane
ARCHIVES = {
    "cifar10": Archive("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", 170_052_171,
                       "cifar-10-batches-bin", {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                                                "test": ("test_batch.bin",)}, 1, "batches.meta.txt"),
    "cifar100": Archive("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", 168_513_733,
                        "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)}, 2,
                        "fine_label_names.txt"),
}  # fmt: skip


def load_cifar(name: str, folder: Path, split: str) -> Dataset:
    """One split of CIFAR-10/100, extracted from the official binary archive in `folder` on first use."""
    a = ARCHIVES[name]
    extracted = folder / a.folder
    _remove_stale(folder, a)
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
    reads into `folder`/<its folder>, atomically: into a temporary folder renamed into place once complete.
    One process per folder does it (a lock file): the other torchrun ranks, or another job on the same
    folder, wait for it and then use its files."""
    a = ARCHIVES[name]
    folder.mkdir(parents=True, exist_ok=True)
    waiting = f"waiting for another process to download and extract {a.file} in {folder}"
    with _one_at_a_time(folder / f".{a.file}.lock", waiting):
        if not (folder / a.folder).is_dir():  # else another process extracted it while this one waited
            _download_and_extract(name, folder)
    return folder / a.folder


def _download_and_extract(name: str, folder: Path) -> None:
    a = ARCHIVES[name]
    archive = folder / a.file
    url = mirror(CIFAR_URL) + a.file
    if not archive.exists():
        print(f"downloading {url} -> {archive} ({a.size / 1e6:.0f} MB)")
        try:
            data = fetch(url, f"{name}: {a.file} is not in {folder} and")
        except NinError as e:
            raise NinError(f"{e}. Download {url} on a machine that can, and put it in {folder} (or point --data-dir "
                           f"at a folder that has it; NIN_DATA_DIR: one with a {name}/ folder).") from None  # fmt: skip
        _check_archive(name, data, url, "nothing was saved; try again later or download it by hand")
        atomic_write_bytes(archive, data)
    else:
        fix = f"delete it and run again, or put the official {a.file} there"
        _check_archive(name, archive.read_bytes(), archive, fix)
    # a name of its own (not the pid: two nodes sharing the folder can have the same pid)
    tmp = Path(tempfile.mkdtemp(prefix=f".{a.folder}.", suffix=".partial", dir=folder))
    try:
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
        except OSError:  # another process extracted it first (where the folder cannot be locked): theirs is as good
            if not (folder / a.folder).is_dir():
                raise
    except (tarfile.TarError, EOFError, zlib.error, KeyError) as e:
        raise NinError(f"{archive}: not a complete {name} binary archive ({type(e).__name__}: {e}); delete it and "
                       f"download {url} again. Nothing was extracted.") from None  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(folder: Path, a: Archive) -> None:
    """Remove what a killed extraction or download left behind: its temporary folder or file, untouched for
    `STALE` seconds (one in use, even by another machine sharing the folder, is younger)."""
    for path in (*folder.glob(f".{a.folder}.*.partial"), *folder.glob(f".{a.file}.*.tmp")):
        try:
            if time.time() - path.stat().st_mtime > STALE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError:
            pass  # another process removed it first


@contextmanager
def _one_at_a_time(path: Path, waiting: str) -> Iterator[None]:
    """Run the block holding an exclusive lock on the lock file `path`; another process that wants it says
    `waiting` and waits. The file is removed on leaving: a waiter then holding the removed file takes the
    new one. Where the file system has no locks, the block runs unlocked."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _lock(fd, waiting) or _names(path, fd):
                try:
                    yield
                finally:
                    path.unlink(missing_ok=True)
                return
        finally:
            os.close(fd)  # releases the lock


def _lock(fd: int, waiting: str) -> bool:
    """Lock the open file `fd` (flock, exclusive), waiting while another process holds it; False where the
    file system or the OS (Windows: no fcntl) has no such locks."""
    try:
        import fcntl  # POSIX
    except ImportError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        return False
    return True


def _names(path: Path, fd: int) -> bool:
    """True if `path` is still the file open as `fd` (not removed, nor replaced by a new one)."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_archive(name: str, data: bytes, source: object, fix: str) -> None:
    a = ARCHIVES[name]
    if len(data) != a.size or (digest := hashlib.md5(data, usedforsecurity=False).hexdigest()) != a.md5:
        found = f"{len(data):,} bytes" if len(data) != a.size else f"MD5 {digest}"
        raise NinError(f"{source}: not the official {a.file} ({found}; expected {a.size:,} bytes with MD5 "
                       f"{a.md5}, the authors' checksum); {fix}")  # fmt: skip
