"""Inference speed: PyTorch eager against onnxruntime on the exported model, side by side, for the fast
preset's network (28x28) and the seed's NiN (224x224).

    python benchmarks/inference.py                                    # latency over 200 calls, 5 rounds
    python benchmarks/inference.py --calls 3 --rounds 1 --batch 8     # seconds (the tests)

Per network and engine: batch-1 latency (median and p99 over `--calls` calls) and batch-`--batch`
throughput (images/s, the median of `--rounds` timed batches); the engines take turns round by round,
so a busy moment on a shared machine shows up in both. Both in fp32, on the CPU, with the weights
of a freshly initialised network (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nin.config import load_preset
from nin.data.types import Spec
from nin.inference.export import OnnxModel, to_onnx
from nin.models.nin import INITS
from nin.models.registry import build
from nin.runtime import cpu_info


def timed(fn, x: torch.Tensor) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"{cpu['cpu_count']}-core {cpu['cpu']}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32; batch-1 latency over {args.calls} calls, batch-{args.batch} throughput over {args.rounds} "
          "rounds")  # fmt: skip
    print(f"{'network':<8} {'engine':<12} {'latency median':>15} {'p99':>9} {'images/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("fast", "d2l"):
            config = load_preset(preset)
            torch.manual_seed(0)
            net = build(config.arch, config.dropout, config.width).apply(INITS[config.init]).eval()
            onnx = to_onnx(net, config, Spec(), Path(tmp) / f"{preset}.onnx")
            engines = {"pytorch": net, "onnxruntime": OnnxModel(onnx)}
            one = torch.rand(1, 1, config.resize, config.resize)
            many = torch.rand(args.batch, 1, config.resize, config.resize)
            latency: dict[str, list[float]] = {e: [] for e in engines}
            throughput: dict[str, list[float]] = {e: [] for e in engines}
            with torch.inference_mode():
                for fn in engines.values():  # warm-up
                    fn(one), fn(many)
                for _ in range(args.rounds):
                    for name, fn in engines.items():
                        latency[name] += [timed(fn, one) for _ in range(max(args.calls // args.rounds, 1))]
                        throughput[name].append(args.batch / timed(fn, many))
            for name in engines:
                ms = sorted(v * 1e3 for v in latency[name])
                p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
                print(f"{preset:<8} {name:<12} {statistics.median(ms):>12.3f} ms {p99:>6.3f} ms "
                      f"{statistics.median(throughput[name]):>10,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
