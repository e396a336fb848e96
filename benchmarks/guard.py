"""What the training loop's divergence check costs: the fast preset's step with and without a host read
of the check after every step.

    python benchmarks/guard.py                       # the fast preset's network, batch 64, on the CPU
    python benchmarks/guard.py --device cuda          # on a GPU, where each read is a host sync
    python benchmarks/guard.py --steps 2 --rounds 1   # seconds (the tests)

`nin train` checks every loss on the device (`nin.guards.blown`, no sync) and reads the flag on the
host every `Runtime.check_every` steps: every step on a CPU, every 25th on a GPU. This times `--steps`
steps of `nin.step.train_step` without the read and with it after every step, interleaved over
`--rounds` rounds, and prints the cost of the read per step (with minus without, per round).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nin.models.nin import init_kaiming, nin_bn
from nin.runtime import local, sync
from nin.training.guards import blown
from nin.training.step import EpochState, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=64)  # the fast preset's
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rt = local(args.device, args.precision)
    torch.manual_seed(0)
    net = nin_bn(16, 0.0).apply(init_kaiming).to(rt.device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 1, 28, 28, device=rt.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=rt.device)
    state = EpochState.start(rt.device)
    micros: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for read in (False, True):
            sync(rt.device)
            t = time.perf_counter()
            for _ in range(args.steps):
                loss = train_step(net, optimizer, x, y, rt, state)
                if read:
                    bool(blown(loss))  # the host read: a sync on a GPU
            sync(rt.device)
            micros[read].append((time.perf_counter() - t) / args.steps * 1e6)
    print(f"nin-bn width 16, batch {args.batch}, {rt.device}, {rt.precision}, torch {torch.__version__}; "
          f"{args.rounds} rounds of {args.steps} steps; microseconds per step, min / median / max")  # fmt: skip
    for read, values in micros.items():
        name = "read every step" if read else "no read"
        print(f"{name:<16} {min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}")
    cost = [a - b for a, b in zip(micros[True], micros[False])]
    print(f"read cost        {min(cost):,.0f} / {statistics.median(cost):,.0f} / {max(cost):,.0f}")


if __name__ == "__main__":
    main()
