"""What bf16 autocast buys the seed recipe: `nin train`'s step on the seed's NiN, fp32 and bf16 side by side.

    python benchmarks/precision.py                  # the d2l preset's step: batch 256 at 224x224
    python benchmarks/precision.py --resize 67 --batch 8 --steps 1 --repeats 1   # seconds (the tests)

`--preset d2l` trains in fp32 (the seed's numerics); `--precision bf16` (or `auto`, where the hardware
computes bf16) is one flag away. Each repeat times `--steps` steps (after 2 warm-up steps) in each
precision, one after the other, on the same weights and batch; the speed-up is taken per repeat (side
by side), then min / median / max over the repeats are printed, so a busy moment on a shared machine
shows up as spread instead of a wrong ratio. A CPU without native bf16 emulates it (a warning says so).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from nin.config import load_preset
from nin.models.nin import INITS, NiN
from nin.runtime import Runtime, cpu_info, local
from nin.training.step import median_images_per_sec


def images_per_sec(net: NiN, x: torch.Tensor, y: torch.Tensor, steps: int, rt: Runtime) -> float:
    """Median images/s of `steps` training steps (after 2 warm-up steps) of a copy of `net`."""
    net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    return median_images_per_sec(net, optimizer, x, y, rt, steps, warmup=2)


def spread(values: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    d2l = load_preset("d2l")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resize", type=int, default=d2l.resize)
    parser.add_argument("--batch", type=int, default=d2l.batch_size)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = NiN(dropout=d2l.dropout).apply(INITS[d2l.init])
    x = torch.rand(args.batch, 1, args.resize, args.resize).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    runtimes = {p: local("cpu", p) for p in ("fp32", "bf16")}
    speeds: dict[str, list[float]] = {p: [] for p in runtimes}
    for _ in range(args.repeats):
        for precision, rt in runtimes.items():
            torch.manual_seed(0)  # the same dropout masks in both precisions
            speeds[precision].append(images_per_sec(net, x, y, args.steps, rt))
    cpu = cpu_info()
    features = ", ".join(f for f in ("avx2", "avx512_bf16", "amx") if cpu[f]) or "none of avx2/avx512_bf16/amx"
    print(f"seed NiN, batch {args.batch} at {args.resize}x{args.resize}, {args.steps} steps x {args.repeats} "
          f"repeats; {cpu['cpu_count']}-core {cpu['cpu']} ({features}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("images/s in training steps, min / median / max")
    for precision, values in speeds.items():
        print(f"{precision:<5} {spread(values, ',.1f')}")
    ratios = [b / f for b, f in zip(speeds["bf16"], speeds["fp32"])]
    print(f"bf16 / fp32 {spread(ratios, '.2f')}x")


if __name__ == "__main__":
    main()
