"""Fetching dataset files, verifying their checksums, and nin's cache folder."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.request
from pathlib import Path

from nin.errors import NinError
from nin.io import atomic_write_bytes


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/nin, else ~/.cache/nin: downloads, verified checksums, decoded image folders."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nin"


def verify(path: Path, content: bytes, expected: str, fix: str) -> None:
    """Check the SHA-256 of `content` (what `path` holds); files that passed are remembered by size and mtime."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, expected]
    cache_file = cache_dir() / "verified.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key) == stamp:
        return
    digest = sha256(content)
    if digest != expected:
        raise NinError(f"{path}: checksum mismatch (SHA-256 {digest[:12]}..., expected {expected[:12]}...): the "
                       f"file is corrupted or not the official one. {fix}")  # fmt: skip
    cache[key] = stamp
    try:
        atomic_write_bytes(cache_file, json.dumps(cache, indent=0).encode())
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def mirror(default: str) -> str:
    return os.environ.get("NIN_DATA_MIRROR", default).rstrip("/") + "/"


def fetch(url: str, missing: str) -> bytes:
    """The bytes at `url`, or one error that says `missing` and what to do."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise NinError(f"{missing} could not be downloaded from {url} ({getattr(e, 'reason', e)})") from None
