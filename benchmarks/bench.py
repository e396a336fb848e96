"""Side-by-side speed of the seed's code path and ours, against this machine's matmul peak.

    python benchmarks/bench.py            # the seed recipe: 5 training batches of 256 at 224 + 2 test batches
    python benchmarks/bench.py --quick    # seconds: a tiny slice at 67x67, one repeat (used by the tests)

Every repeat runs, in this order and each in a fresh process (so that peak RSS, from POSIX's resource module,
is its own): the matmul peaks in fp32 and bf16 (one process: they measure no memory), the reference loop, and
our loop. Figures are min / median / max over
the repeats; the ratio is taken per repeat (side by side), then summarised.

The reference loop is the seed's code path without torchvision: a per-sample Dataset that makes each
28x28 image a PIL image, resizes it bilinearly and converts it to a float tensor (`transforms.Resize`
then `ToTensor`), a DataLoader with 4 worker processes that reshuffles, an fp32 NCHW model, plain SGD,
and d2l `train_ch6`'s metric sums and timer. Our loop is `nin.train.train` itself, end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nin.config import Config, load_preset
from nin.data.registry import load_fashion_mnist
from nin.models.nin import NiN, init_weights, layer_summary
from nin.training.loop import train


class PILResize(torch.utils.data.Dataset):
    """The seed's per-sample transform: PIL image -> bilinear Resize -> ToTensor (float in [0, 1])."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int):
        self.images, self.labels, self.size = images.numpy(), labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(self.images[i]).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).unsqueeze(0), self.labels[i]


def reference_loop(config: Config, workers: int) -> dict:
    """d2l `train_ch6` on the seed's data path, for one epoch of the slice; returns its timings."""
    start = time.perf_counter()
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    # the seed asks for 4 workers on any machine; PyTorch warns about it on 2 cores, we know
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    # the workers start as the platform's default has the seed's start (fork on Linux): this process was spawned,
    # and its inherited default would spawn them too, a fresh interpreter importing torch per worker, in the timing
    method = multiprocessing.get_all_start_methods()[0] if workers else None
    loader = dict(batch_size=config.batch_size, num_workers=workers, multiprocessing_context=method)
    train_iter = torch.utils.data.DataLoader(
        PILResize(train_x[: config.train_limit], train_y[: config.train_limit], config.resize), shuffle=True, **loader
    )
    test_iter = torch.utils.data.DataLoader(
        PILResize(test_x[: config.test_limit], test_y[: config.test_limit], config.resize), **loader
    )
    torch.manual_seed(config.seed)
    net = NiN(dropout=config.dropout)
    net.apply(init_weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    sums, step_seconds = [0.0, 0.0, 0], 0.0  # d2l's Accumulator(3): loss * n, correct, n
    net.train()
    for X, y in train_iter:
        t = time.perf_counter()  # d2l's Timer: from the fetched batch to the updated metrics
        optimizer.zero_grad()
        y_hat = net(X)
        loss = loss_fn(y_hat, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sums[0] += float(loss) * X.shape[0]
            sums[1] += float((y_hat.argmax(dim=1) == y).sum())
            sums[2] += X.shape[0]
        step_seconds += time.perf_counter() - t
    net.eval()
    with torch.no_grad():
        correct = sum(float((net(X).argmax(dim=1) == y).sum()) for X, y in test_iter)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "step_seconds": step_seconds, "test_acc": correct / config.test_limit}


def our_loop(config: Config) -> dict:
    """`nin train` on the same slice, end to end (data loading and evaluation included)."""
    start = time.perf_counter()
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with tempfile.TemporaryDirectory() as out, quiet[0], quiet[1]:
        (metrics,) = train(config, Path(out))
    return {
        "seconds": time.perf_counter() - start,
        "step_seconds": config.train_limit / metrics["examples_per_sec"],
        "test_acc": metrics["test_acc"],
    }


def matmul_peak(dtype: torch.dtype, max_n: int) -> dict:
    """Best GFLOP/s of a square matmul, at the first size (doubling from 256) that takes >= 0.25 s."""
    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        t = time.perf_counter()
        a @ b
        if time.perf_counter() - t >= 0.25 or n >= max_n:
            break
        n *= 2
    best = min(_timed(lambda: a @ b) for _ in range(3))
    return {"gflops": 2 * n**3 / best / 1e9, "n": n}


def matmul_peaks(max_n: int) -> dict:
    return {"fp32": matmul_peak(torch.float32, max_n), "bf16": matmul_peak(torch.bfloat16, max_n)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _child(queue: multiprocessing.Queue, fn, *args) -> None:
    result = fn(*args)
    usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    queue.put({**result, "rss_mb": usage.ru_maxrss / 1024, "worker_rss_mb": children.ru_maxrss / 1024})


def in_fresh_process(fn, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, fn, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def spread(values: list[float], fmt: str = ".1f") -> str:
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny slice at 67x67, one repeat: runs in seconds")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 3; --quick: 1)")
    p.add_argument("--batches", type=int, help="training batches (default 5; --quick: 2)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="our loop's precision")
    p.add_argument("--json", action="store_true", help="print the raw figures as JSON as well")
    args = p.parse_args(argv)
    quick = dict(resize=67, batch_size=32) if args.quick else {}
    batches, repeats = args.batches or (2 if args.quick else 5), args.repeats or (1 if args.quick else 3)
    config = Config(
        **{
            **load_preset("d2l").to_dict(),
            **quick,
            "epochs": 1,
            "device": "cpu",
            "precision": args.precision,
        }
    )
    config = Config(**{**config.to_dict(), "train_limit": batches * config.batch_size,
                       "test_limit": 2 * config.batch_size})  # fmt: skip
    workers, max_n = (2, 512) if args.quick else (4, 4096)
    # forward MACs x 2 FLOPs, x 3 for forward + backward (input and weight gradients)
    train_gflop = 6 * sum(row["macs"] for row in layer_summary(NiN(), config.resize)) / 1e9

    runs: dict[str, list[dict]] = {"fp32": [], "bf16": [], "reference": [], "ours": []}
    for _ in range(repeats):
        peaks = in_fresh_process(matmul_peaks, max_n)
        runs["fp32"].append(peaks["fp32"])
        runs["bf16"].append(peaks["bf16"])
        runs["reference"].append(in_fresh_process(reference_loop, config, workers))
        runs["ours"].append(in_fresh_process(our_loop, config))

    n = config.train_limit
    fp32 = [r["gflops"] for r in runs["fp32"]]
    bf16 = [r["gflops"] for r in runs["bf16"]]
    e2e = {k: [n / r["seconds"] for r in runs[k]] for k in ("reference", "ours")}
    steps = {k: [n / r["step_seconds"] for r in runs[k]] for k in ("reference", "ours")}
    ratio = [o / r for o, r in zip(e2e["ours"], e2e["reference"])]
    step_gflops = [s * train_gflop for s in steps["ours"]]
    print(f"nin bench: {n} training images ({batches} batches of {config.batch_size}) + {config.test_limit} test "
          f"images at {config.resize}x{config.resize}, {repeats} repeat(s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print("figures: min / median / max")
    print(f"matmul peak fp32           {spread(fp32)} GFLOP/s (n={runs['fp32'][0]['n']})")
    print(f"matmul peak bf16           {spread(bf16)} GFLOP/s (n={runs['bf16'][0]['n']})")
    for k, name in (("reference", "reference loop (seed path)"), ("ours", f"our loop ({args.precision})")):
        print(f"{name:<26} {spread(e2e[k])} examples/s end to end, {spread(steps[k])} examples/s in steps; "
              f"peak RSS {spread([r['rss_mb'] for r in runs[k]], '.0f')} MB "
              f"+ workers {spread([r['worker_rss_mb'] for r in runs[k]], '.0f')} MB")  # fmt: skip
    print(f"speed-up, end to end       {spread(ratio, '.2f')}x")
    print(f"our train step             {spread(step_gflops)} GFLOP/s ({train_gflop:.2f} GFLOP per training image): "
          f"{spread([g / statistics.median(fp32) for g in step_gflops], '.0%')} of the fp32 peak, "
          f"{spread([g / statistics.median(bf16) for g in step_gflops], '.0%')} of the bf16 peak")  # fmt: skip
    result = {"config": config.to_dict(), "train_gflop_per_image": train_gflop, "runs": runs}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
