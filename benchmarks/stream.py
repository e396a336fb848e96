"""Streaming image folders: peak memory of the whole job and training images/s against the number of images,
nin's `StreamBatches` side by side with torchvision's `ImageFolder` + `DataLoader` (same workers, transforms,
network and training step).

    /work/peer-venv/bin/python benchmarks/stream.py /work/bench-data/photos/{10000,50000,100000} \\
        --loaders nin torchvision --steps 100 --json docs/records/streaming.json --plot docs/streaming.png
    python benchmarks/stream.py DIR --loaders nin --steps 3      # nin alone (the tests; no torchvision needed)
    python benchmarks/stream.py DIR --epoch                       # one full `nin train --stream` epoch
    python benchmarks/stream.py DIR --predict 224 128             # per-core decode and nin-imagenet step rates

Each (folder, loader) runs in a fresh process: `--steps` training steps (batch 128, nin-bn width 16 at 64 px,
RandomResizedCrop + flip, fp32) after 5 untimed ones; images/s is over the timed steps, data loading included
(the loader's workers decode while the network trains). Peak memory is sampled every 0.1 s over the process and
all its children (the workers): PSS (shared pages split between the processes that share them: the job's real
footprint) and RSS (shared pages counted in every process). torchvision is not a nin dependency: it runs in a
venv of its own (docs/datasets.md says how), where nin is installed too. Linux only: memory is read from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

WARMUP, BATCH, SIZE, WIDTH, WORKERS = 5, 128, 64, 16, 2


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:  # it ended meanwhile
            pass
    return found


def memory(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) in bytes summed over `pids`."""
    pss = rss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Pss:", "Rss:")):
                    kb = int(line.split()[1]) * 1024
                    pss, rss = (pss + kb, rss) if line.startswith("Pss:") else (pss, rss + kb)
        except OSError:
            pass
    return pss, rss


def measured(command: list[str]) -> tuple[str, dict]:
    """Run `command`; (its stdout, {wall seconds, peak PSS and RSS of its process tree in MB})."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while process.poll() is None:
            pss, rss = memory(tree(process.pid))
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return out, {"seconds": time.perf_counter() - start, "pss_mb": peak[0] / 2**20, "rss_mb": peak[1] / 2**20}


def batches(loader: str, root: Path):
    """(endless training batches (float images, labels) of root/train at SIZE, epoch after epoch: nin's or
    torchvision's; the number of training images)."""
    import itertools

    import torch

    if loader == "nin":
        from nin.data.folder import stream_folder
        from nin.data.stream import StreamBatches

        files = stream_folder(root, "train", SIZE)
        stream = StreamBatches(files, BATCH, torch.device("cpu"), train=True, workers=WORKERS)
        return itertools.chain.from_iterable(stream.epoch(e) for e in itertools.count()), len(files)
    from torchvision import datasets, transforms

    # what a user writes: ImageFolder's own loader (full-size decode), the standard training transforms
    augment = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor()])  # fmt: skip
    data = datasets.ImageFolder(root / "train", transform=augment)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=WORKERS, prefetch_factor=2)
    return itertools.chain.from_iterable(loader for _ in itertools.count()), len(data)


def child(loader: str, root: Path, steps: int) -> None:
    """Train `steps` + WARMUP steps on `loader`'s batches; print one JSON line of figures."""
    import torch

    from nin.models.nin import INITS, nin_bn
    from nin.runtime import Runtime
    from nin.training.step import EpochState, train_step

    torch.manual_seed(0)
    net = nin_bn(WIDTH, 0.0, 3, 10).to(memory_format=torch.channels_last)
    net.apply(INITS["kaiming"])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rt, state = Runtime(torch.device("cpu")), EpochState.start(torch.device("cpu"))
    start = time.perf_counter()
    it, n = batches(loader, root)
    timed, seen = None, 0
    for step, (x, y) in enumerate(it):
        if step == WARMUP:
            timed, first = time.perf_counter(), time.perf_counter() - start
        seen += len(y) if step >= WARMUP else 0
        train_step(net, optimizer, x.contiguous(memory_format=torch.channels_last), y, rt, state)
        if step + 1 == WARMUP + steps:
            break
    seconds = time.perf_counter() - timed
    print(json.dumps({"images": n, "images_per_sec": seen / seconds, "timed_images": seen,
                      "startup_seconds": first, "torch": torch.__version__}))  # fmt: skip


def epoch(root: Path) -> dict:
    """One full `nin train --stream` epoch over root (train/ + val/), measured."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "nin", "train", "--dataset", "folder", "--data-dir", str(root), "--stream",
                   "--workers", str(WORKERS), "--arch", "nin-bn", "--width", str(WIDTH), "--resize", str(SIZE),
                   "--epochs", "1", "--batch-size", str(BATCH), "--lr", "0.05", "--momentum", "0.9", "--init",
                   "kaiming", "--dropout", "0", "--normalize", "--device", "cpu", "--precision", "fp32", "--out",
                   out]  # fmt: skip
        text, figures = measured(command)
    metrics = [line for line in text.splitlines() if line.startswith("epoch 1/1")]
    return {**figures, "log": metrics[-1] if metrics else text[-500:]}


def predict(root: Path, sizes: list[int]) -> list[dict]:
    """For each input size: images/s one worker process streams from root/train (decode, crop, flip: no
    training), and images/s of nin-imagenet's training step in this process (batch 32, fp32 and bf16)."""
    import torch

    from nin.data.folder import stream_folder
    from nin.data.stream import StreamBatches
    from nin.models.nin import INITS, nin_imagenet
    from nin.runtime import Runtime
    from nin.training.step import median_images_per_sec

    rows = []
    for size in sizes:
        files = stream_folder(root, "train", size)
        batches = StreamBatches(files[:1024], 64, torch.device("cpu"), train=True, workers=1)
        start = time.perf_counter()
        n = sum(len(y) for _, y in batches.epoch(0))
        row = {"size": size, "decode_per_core": n / (time.perf_counter() - start)}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            net = nin_imagenet(3, 1000).to(memory_format=torch.channels_last)
            net.apply(INITS["kaiming"])
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            x = torch.rand(32, 3, size, size).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 1000, (32,))
            rt = Runtime(torch.device("cpu"), torch.bfloat16 if precision == "bf16" else None)
            row[f"step_{precision}"] = median_images_per_sec(net, optimizer, x, y, rt, steps=5, warmup=2)
        print(f"{size} px: one worker streams {row['decode_per_core']:.0f} images/s (from {root}); nin-imagenet "
              f"trains {row['step_fp32']:.1f} images/s fp32, {row['step_bf16']:.1f} bf16 "
              f"({torch.get_num_threads()} threads)")  # fmt: skip
        rows.append(row)
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for loader in sorted({(r["loader"], r["torch"]) for r in results}):
        rows = sorted((r for r in results if (r["loader"], r["torch"]) == loader), key=lambda r: r["images"])
        loader = f"{loader[0]}, torch {loader[1]}"
        n = [r["images"] for r in rows]
        mem.plot(n, [r["pss_mb"] for r in rows], "o-", label=loader)
        speed.plot(n, [r["images_per_sec"] for r in rows], "o-", label=loader)
    mem.set(xlabel="training images", ylabel="peak memory, main + workers (PSS, MB)", ylim=(0, None))
    speed.set(xlabel="training images", ylabel="training images/s", ylim=(0, None))
    for ax in (mem, speed):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"streaming JPEG folders: nin-bn width {WIDTH} at {SIZE} px, batch {BATCH}, {WORKERS} workers, fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="*", help="image folders (train/ + val/), one per size")
    parser.add_argument("--loaders", nargs="+", default=["nin", "torchvision"], choices=["nin", "torchvision"])
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per run (default 100)")
    parser.add_argument("--epoch", action="store_true", help="instead: one full nin train --stream epoch")
    parser.add_argument("--predict", type=int, nargs="+", metavar="SIZE", help="instead: the rates a prediction needs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--plot", type=Path, help="and plot them here (PNG)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="plot these earlier --json too")
    parser.add_argument("--child", choices=["nin", "torchvision"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.folders[0], args.steps)
    from nin.data.stream import usable_cores
    from nin.runtime import cpu_info

    print(f"{cpu_info()['cpu']}, {usable_cores()} cores; {sys.executable}")
    results = []
    if args.predict:
        results = predict(args.folders[0], args.predict)
    for root in args.folders if not args.predict else []:
        if args.epoch:
            figures = epoch(root)
            print(f"{root}: one nin train --stream epoch: {figures['seconds']:.0f} s wall, peak PSS "
                  f"{figures['pss_mb']:.0f} MB, peak RSS {figures['rss_mb']:.0f} MB; {figures['log']}")  # fmt: skip
            results.append({"folder": str(root), **figures})
            continue
        for loader in args.loaders:  # alternating per size, so that both see the same machine state
            command = [sys.executable, __file__, str(root), "--child", loader, "--steps", str(args.steps)]
            out, figures = measured(command)
            row = {"folder": str(root), "loader": loader, **json.loads(out.splitlines()[-1]), **figures}
            results.append(row)
            print(f"{row['images']:>7,} images  {loader:<12} {row['images_per_sec']:7.1f} images/s  peak PSS "
                  f"{row['pss_mb']:6.0f} MB  peak RSS {row['rss_mb']:6.0f} MB  start + {WARMUP} steps "
                  f"{row['startup_seconds']:.1f} s  (torch {row['torch']})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot and not (args.epoch or args.predict):
        plot(results + [row for path in args.merge for row in json.loads(path.read_text())], args.plot)


if __name__ == "__main__":
    main()
