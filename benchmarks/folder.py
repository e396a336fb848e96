"""`--dataset folder` at scale: Fashion-MNIST's 70,000 images written out as PNG folders, then the
start-up time and peak memory of loading them, first (decoding every file) and cached.

    python benchmarks/folder.py runs/fmnist-png               # writes the folders once, then measures
    python benchmarks/folder.py DIR --image-size 28 --limit 300 # a small one (the tests)

Each load runs in a fresh process (`nin.data.load("folder", DIR)`: both splits) with its own empty cache
folder for the first load; the figures are that process's wall time and its peak resident memory
(ru_maxrss: POSIX's resource module, so Linux or macOS). The folders are what `nin train --dataset folder
--data-dir DIR --image-size 28` reads: the folder-vs-IDX check in docs/datasets.md trains on them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from nin.data.registry import load_split
from nin.data.types import CLASS_NAMES
from nin.runtime import cpu_info

# one process per load: its wall time, and its peak resident memory as it reports it
LOAD = ("import resource, sys, nin; nin.data.load('folder', sys.argv[1], image_size=int(sys.argv[2])); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")  # fmt: skip


def write_folders(root: Path, limit: int = 0) -> int:
    """Fashion-MNIST as root/{train,test}/<class>/<index>.png ('/' in a class name becomes '-');
    the first `limit` images of each split (0: all). Returns the number of files written."""
    written = 0
    for split in ("train", "test"):
        data = load_split("fashion-mnist", split)
        n = limit or len(data)
        for name in CLASS_NAMES:
            (root / split / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = root / split / CLASS_NAMES[data.labels[i]].replace("/", "-") / f"{i:05d}.png"
            Image.fromarray(data.images[i, 0].numpy()).save(path)
            written += 1
    return written


def measure(root: Path, image_size: int, cache: Path) -> tuple[float, float]:
    """(wall seconds, peak MB) of one process that loads the folder dataset with the cache in `cache`."""
    start = time.perf_counter()
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out = subprocess.run([sys.executable, "-c", LOAD, str(root), str(image_size)], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return time.perf_counter() - start, int(out.split()[-1]) / 1024  # ru_maxrss is in KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--limit", type=int, default=0, help="images per split (default 0: all 70,000)")
    args = parser.parse_args()
    if not (args.root / "train").is_dir():
        start = time.perf_counter()
        n = write_folders(args.root, args.limit)
        print(f"wrote {n:,} PNG files into {args.root} in {time.perf_counter() - start:.1f} s")
    files = sum(1 for _ in args.root.rglob("*.png"))
    print(f"{cpu_info()['cpu']}, {os.cpu_count()} CPUs; {files:,} images, stored at {args.image_size}")
    with tempfile.TemporaryDirectory() as cache:
        seconds, peak = measure(args.root, args.image_size, Path(cache))
        print(f"first load (decode every file, write the cache): {seconds:.1f} s, peak memory {peak:.0f} MB")
        seconds, peak = measure(args.root, args.image_size, Path(cache))
        print(f"cached load: {seconds:.1f} s, peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
