"""int8 against fp32 ONNX, side by side: the shipped weights exported both ways (`nin export --weights NAME
--format onnx [--quantize int8]`) and run by onnxruntime on the CPU.

    python benchmarks/int8.py                                     # fast and mnist-fast, full test sets
    python benchmarks/int8.py --test-limit 500 --calls 5 --rounds 1   # seconds (the tests)

Per weights and precision: the file's size, test accuracy (all 10,000 test images unless --test-limit), batch-1
latency (median and p99 over `--calls` calls) and batch-256 throughput (images/s: min, median and max of
`--rounds` timed batches). fp32 and int8 take turns call by call and round by round, so a busy moment on a
shared machine shows up in both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

import nin
from nin.data.preprocess import to_inputs
from nin.data.registry import load_split
from nin.inference.evaluate import logits
from nin.inference.export import CALIBRATION, OnnxModel
from nin.training.provenance import cpu_info


def timed(model: OnnxModel, x: torch.Tensor) -> float:
    t = time.perf_counter()
    model(x)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="fast,mnist-fast", help="comma-separated shipped weights")
    parser.add_argument("--test-limit", type=int, default=0, help="the first N test images only (0: all)")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    cpu = cpu_info()
    print(f"{cpu['cpu_count']}-core {cpu['cpu']}; onnxruntime {onnxruntime.__version__} (CPU), torch "
          f"{torch.__version__}; int8: static, per-channel int8 weights, uint8 activations, QDQ, calibrated on "
          f"{CALIBRATION} training images; batch-1 latency over {args.calls} calls, batch-{args.batch} throughput "
          f"over {args.rounds} rounds")  # fmt: skip
    print(f"{'weights':<11} {'model':<6} {'bytes':>9} {'test acc':>9} {'latency median':>15} {'p99':>9} "
          f"{'images/s min':>13} {'median':>8} {'max':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.weights.split(","):
            run = nin.load_weights(name)
            files = {"fp32": run.export(Path(tmp) / f"{name}.onnx", format="onnx"),
                     "int8": run.export(Path(tmp) / f"{name}-int8.onnx", format="onnx", quantize="int8")}  # fmt: skip
            models = {kind: OnnxModel(path) for kind, path in files.items()}
            test = load_split(run.spec.dataset, "test")
            if args.test_limit:
                test = test[: args.test_limit]
            accuracy = {k: (logits(m, test.images, m.resize).argmax(1) == test.labels).float().mean().item()
                        for k, m in models.items()}  # fmt: skip
            size = run.config.resize
            one, many = to_inputs(test.images[:1], size), to_inputs(test.images[: args.batch], size)
            for m in models.values():  # warm-up
                m(one), m(many)
            latency: dict[str, list[float]] = {k: [] for k in models}
            rate: dict[str, list[float]] = {k: [] for k in models}
            for _ in range(args.calls):
                for k, m in models.items():
                    latency[k].append(timed(m, one))
            for _ in range(args.rounds):
                for k, m in models.items():
                    rate[k].append(len(many) / timed(m, many))
            for k in models:
                lat = sorted(latency[k])
                p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
                print(f"{name:<11} {k:<6} {files[k].stat().st_size:>9,} {accuracy[k]:>9.4f} "
                      f"{statistics.median(lat) * 1e3:>12.3f} ms {p99 * 1e3:>6.3f} ms {min(rate[k]):>13,.0f} "
                      f"{statistics.median(rate[k]):>8,.0f} {max(rate[k]):>8,.0f}")  # fmt: skip
            change = (accuracy["int8"] - accuracy["fp32"]) * 100
            print(f"{name:<11} int8 / fp32: size {files['int8'].stat().st_size / files['fp32'].stat().st_size:.2f}, "
                  f"batch-1 latency {statistics.median(latency['int8']) / statistics.median(latency['fp32']):.2f}, "
                  f"throughput {statistics.median(rate['int8']) / statistics.median(rate['fp32']):.2f}; accuracy "
                  f"{change:+.2f} points on {len(test):,} test images")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
