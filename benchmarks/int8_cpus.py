"""int8 ONNX on each x86 CPU kind: a shipped network exported fp32 and int8, run by onnxruntime here and on an
emulated AVX2-only CPU (QEMU's user mode, `qemu-x86_64 -cpu EPYC-Rome`: AVX2, no AVX-512, no VNNI).

    python benchmarks/int8_cpus.py                          # fast, all 10,000 test images (~15 min emulated)
    python benchmarks/int8_cpus.py --test-limit 300         # seconds here, ~30 s emulated (the test)

Why emulate: onnxruntime picks its int8 kernels by the CPU's features. Without VNNI, its u8s8 kernels add pairs of
uint8 x int8 products in int16 and saturate; an export is accurate on every x86 CPU only if its int8 weights stay
within [-64, 64] (255 * 64 * 2 = 32,640 < 32,767). The emulated process sees only the emulated CPU's features
(CPUID), so onnxruntime runs the same code paths it runs on a real AVX2-only EPYC; the line `features:` shows what
numpy's CPUID probe found in each process. Emulation is slow: compare accuracy there, never speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# What runs in each process, here and emulated: the features the process sees, and each model's predictions.
PROBE = """
import json, sys
import numpy as np, onnxruntime
from numpy._core._multiarray_umath import __cpu_features__ as f
x = np.load(sys.argv[1])
out = {"features": {k: bool(f.get(k)) for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16")}}
for path in sys.argv[2:]:
    s = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    out[path] = np.concatenate([s.run(["logits"], {"images": x[i:i + 500]})[0].argmax(1)
                                for i in range(0, len(x), 500)]).tolist()
print(json.dumps(out))
"""


def predictions(models: list[Path], images: Path, cpu: str | None) -> dict:
    """Each model's top-1 on `images` (an .npy of float (N, C, H, W)), here or on QEMU's `cpu`."""
    command = [sys.executable, "-c", PROBE, str(images), *map(str, models)]
    if cpu:
        command = ["qemu-x86_64", "-cpu", cpu, *command]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="fast", help="a shipped network (nin weights)")
    parser.add_argument("--test-limit", type=int, default=0, help="the first N test images only (0: all)")
    parser.add_argument("--cpu", default="EPYC-Rome", help="QEMU's CPU model for the emulated run")
    parser.add_argument(
        "--onnx",
        nargs=2,
        type=Path,
        metavar=("FP32", "INT8"),
        help="measure these exports of --weights (nin export) instead of exporting afresh",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)
    if shutil.which("qemu-x86_64") is None:
        print("benchmarks/int8_cpus.py: needs qemu-x86_64 (Debian: apt-get install qemu-user)", file=sys.stderr)
        return 2

    import nin
    from nin.data.preprocess import to_inputs
    from nin.data.registry import load_split
    from nin.runtime import cpu_info

    run = nin.load_weights(args.weights)
    test = load_split(run.spec.dataset, "test")
    if args.test_limit:
        test = test[: args.test_limit]
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.npy"
        np.save(images, to_inputs(test.images, run.config.resize).numpy())
        models = args.onnx or [run.export(Path(tmp) / "fp32.onnx", format="onnx"),
                               run.export(Path(tmp) / "int8.onnx", format="onnx", quantize="int8")]  # fmt: skip
        here, emulated = predictions(models, images, None), predictions(models[1:], images, args.cpu)
    labels = test.labels.numpy()
    acc = lambda top: float((np.array(top) == labels).mean())  # noqa: E731
    result = {
        "weights": args.weights, "images": len(test), "here": cpu_info()["cpu"], "emulated": f"qemu -cpu {args.cpu}",
        "features_here": here["features"], "features_emulated": emulated["features"],
        "fp32": acc(here[str(models[0])]), "int8_here": acc(here[str(models[1])]),
        "int8_emulated": acc(emulated[str(models[1])]),
        "int8_agreement": float((np.array(here[str(models[1])]) == np.array(emulated[str(models[1])])).mean()),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.weights}: {len(test):,} test images; onnxruntime; int8 as `nin export --quantize int8` writes it")
    for where in ("here", "emulated"):
        features = ", ".join(k for k, v in result[f"features_{where}"].items() if v) or "none of the probed"
        print(f"{where:<9} {result[where]}; features: {features}")
    print(f"fp32 (here)       test acc {result['fp32']:.4f}")
    for where in ("here", "emulated"):
        print(f"int8 ({where:<8}) test acc {result[f'int8_{where}']:.4f} "
              f"({(result[f'int8_{where}'] - result['fp32']) * 100:+.2f} points)")  # fmt: skip
    print(f"int8 top-1 the same here and emulated on {result['int8_agreement']:.2%} of the images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
