"""Synthetic photo-like image folders for the streaming benchmarks: real Fashion-MNIST items composited at a
random scale, position and colour onto textured backgrounds, saved as JPEG at 160-320 px, in the ImageNet layout.

    python benchmarks/photos.py /work/bench-data/photos --sizes 10000 50000 100000
    python benchmarks/photos.py /work/bench-data/large --sizes 1000 --px 400 500   # ImageNet-sized photos

writes DIR/full/{train,val}/<class>/<thousands>/<index>.JPEG once (the largest size; nested folders and
upper-case suffixes as ImageNet has them), then DIR/<n>/ for each size: train/ holds hard links to the first
`n` training images, val/ links to the same (--val, default 2,000) validation images. Every image is drawn
from its own seed (its index), so the folders are the same on every machine.
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from nin.data.registry import load_split
from nin.data.stream import usable_cores


def photo(item: np.ndarray, seed: int, px: tuple[int, int] = (160, 320)) -> Image.Image:
    """One 28x28 uint8 item laid over a textured background `px` pixels wide and high (each drawn), at a
    random scale, place and colour."""
    rng = np.random.default_rng(seed)
    w, h = rng.integers(px[0], px[1] + 1, size=2)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)  # a smooth colour field...
    background = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    background += rng.integers(-24, 25, size=(h, w, 1), dtype=np.int16)  # ...with grain, as photos have
    side = int(min(w, h) * rng.uniform(0.4, 0.9))
    mask = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    patch = background[top : top + side, left : left + side].astype(np.float32)
    colour = rng.integers(0, 256, size=3).astype(np.float32)
    background[top : top + side, left : left + side] = patch * (1 - mask[..., None]) + colour * mask[..., None]
    return Image.fromarray(background.clip(0, 255).astype(np.uint8))


def _write(job: tuple[Path, np.ndarray, int, tuple[int, int]]) -> None:
    path, item, seed, px = job
    photo(item, seed, px).save(path, quality=90)


def write_full(root: Path, n_train: int, n_val: int, px: tuple[int, int] = (160, 320)) -> None:
    """root/{train,val}/<class>/<thousands>/<index>.JPEG: `n_train` and `n_val` images (Fashion-MNIST items)."""
    jobs = []
    for split, n, source, offset in (("train", n_train, "train", 0), ("val", n_val, "test", 10_000_000)):
        data = load_split("fashion-mnist", source)
        for i in range(n):
            k = i % len(data)
            cls = data.classes[data.labels[k]].replace("/", "-")
            path = root / split / cls / f"{i // 1000:03d}" / f"{i:06d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((path, data.images[k, 0].numpy(), offset + i, px))
    with Pool(usable_cores()) as pool:
        pool.map(_write, jobs, chunksize=256)


def link_subset(full: Path, root: Path, n: int) -> None:
    """root/train: hard links to the first `n` training images of `full`; root/val: to all of its val/."""
    for f in sorted(full.rglob("*.JPEG")):
        rel = f.relative_to(full)
        if rel.parts[0] == "train" and int(f.stem) >= n:
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(f, root / rel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--val", type=int, default=2_000, help="validation images, the same for every size")
    parser.add_argument("--px", type=int, nargs=2, default=[160, 320], help="least and most pixels a side")
    args = parser.parse_args()
    full = args.root / "full"
    if not (full / "val").is_dir():
        start = time.perf_counter()
        write_full(full, max(args.sizes), args.val, tuple(args.px))
        print(f"wrote {max(args.sizes) + args.val:,} JPEGs into {full} in {time.perf_counter() - start:.0f} s")
    for n in args.sizes:
        if not (args.root / str(n)).is_dir():
            link_subset(full, args.root / str(n), n)
            print(f"{args.root / str(n)}: {n:,} training + {args.val:,} validation images (hard links)")


if __name__ == "__main__":
    main()
