"""Training-step speed of the `fast` preset's network family (nin-bn at 28x28), variant by variant.

    python benchmarks/steps.py                      # widths 16 and 32, BatchNorm on/off, NHWC/NCHW
    python benchmarks/steps.py --widths 4 --steps 2 --repeats 1   # seconds (used by the tests)
    python benchmarks/steps.py --precision bf16     # bf16 autocast, as `nin train` (auto: its choice here)

One step is `nin train`'s own (`nin.step.train_step`: forward, loss, backward, SGD update, metrics) on a
random batch (default 64, the fast preset's; speed does not depend on the pixel values). Each variant's
images/sec is the median step over `--steps` timed steps (after 3 warm-up steps); repeats are
interleaved across variants, and min / median / max over the repeats are printed, so a busy moment on
a shared machine shows up as spread instead of a wrong ratio.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from nin.config import PRECISIONS
from nin.models.nin import NiN, init_kaiming, layer_summary
from nin.runtime import Runtime, local
from nin.training.step import median_images_per_sec


def variant(width: int, batch_norm: bool) -> NiN:
    blocks = ((width, 3, 1, 1), (2 * width, 3, 1, 1), (4 * width, 3, 1, 1))  # nin_bn's blocks
    return NiN(dropout=0.0, blocks=blocks, pool=2, batch_norm=batch_norm).apply(init_kaiming)


def images_per_sec(net: NiN, channels_last: bool, batch: int, steps: int, rt: Runtime) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    return median_images_per_sec(net, optimizer, x, y, rt, steps, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch", type=int, default=64)  # the fast preset's
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")  # nin train's choice for auto
    args = parser.parse_args()
    cases = [(w, bn, cl) for w in args.widths for bn, cl in ((True, True), (True, False), (False, True))]
    results: dict[tuple, list[float]] = {case: [] for case in cases}
    rt = local("cpu", args.precision)  # the precision `nin train` would run here
    for _ in range(args.repeats):
        for w, bn, cl in cases:
            torch.manual_seed(0)
            results[(w, bn, cl)].append(images_per_sec(variant(w, bn), cl, args.batch, args.steps, rt))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {rt.precision}, 28x28")
    print(f"{'width':>5} {'BatchNorm':>9} {'layout':>6} {'MMAC/img':>9}   images/sec min / median / max")
    for (w, bn, cl), values in results.items():
        macs = sum(r["macs"] for r in layer_summary(variant(w, bn), 28)) / 1e6
        low, mid, high = min(values), statistics.median(values), max(values)
        print(f"{w:>5} {'on' if bn else 'off':>9} {'NHWC' if cl else 'NCHW':>6} {macs:>9.1f}   "
              f"{low:,.0f} / {mid:,.0f} / {high:,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
