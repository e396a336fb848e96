"""Ship a trained run's weights with nin: write src/nin/inference/weights/NAME/ (model.safetensors, config.json
with the model card's measured facts, README.md), the directory form of nin/inference/pretrained.py.

For maintainers. The run must have finished (its run record says so). The card's test accuracy is measured
here, in fp32 on the CPU, on the full 10,000 test images, from the weights file just written (so that any CPU
reproduces it: tests/inference/test_shipped.py does), not copied from training's metrics (bf16 where the CPU
has it).

    nin train --preset fast --out runs/fast
    python benchmarks/ship_weights.py runs/fast --name fast \
        --description "the fast preset's network (NiN with BatchNorm, width 16) on Fashion-MNIST"
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

import nin
from nin.api import Run, load_weights
from nin.data.preprocess import to_inputs
from nin.errors import NinError
from nin.inference import pretrained
from nin.inference.shipped import WEIGHTS_DIR
from nin.models.nin import layer_summary
from nin.training.provenance import _git_commit


def ship(run_dir: Path, name: str, description: str, out: Path = WEIGHTS_DIR) -> dict:
    """Write `out`/NAME/ from the run in `run_dir`; returns its config.json (the model card)."""
    run = nin.load(run_dir)
    sessions = (run.record or {}).get("sessions", [])
    if not sessions or sessions[-1]["status"] != "finished" or len(run.metrics) != run.config.epochs:
        raise NinError(f"{run_dir}: not a finished run with a run record; ship only runs that trained to the end")
    config = dataclasses.replace(run.config, precision=sessions[0]["precision"])  # what ran, not "auto"
    folder, card = out / name, {"name": name, "description": description}
    pretrained.save(folder, run.model, config, run.spec, run.record, run.metrics, card)

    # measured from the file just written, in fp32 on the CPU, as `nin evaluate --weights NAME` measures it
    model, config, spec, _ = pretrained.read_model_dir(folder)
    measuring = dataclasses.replace(config, precision="fp32")  # as every load of shipped weights evaluates
    with tempfile.TemporaryDirectory() as tmp:
        result = Run(folder, folder / pretrained.WEIGHTS, measuring, model, run.metrics, run.record, spec).evaluate(
            device="cpu", plot=Path(tmp) / "confusion.png"
        )
    rows = layer_summary(model, config.resize, spec.channels)
    gap, error = margins(model, config.resize)
    card["evaluation"] = {
        "test_acc": result["test_acc"],
        "test_correct": round(result["test_acc"] * result["examples"]),
        "test_images": result["examples"],
        "evaluated": "fp32 on the CPU, from the weights file",
        "smallest_top2_gap": gap,
        "fp32_error": error,
        "per_class_acc": {c: round(a, 4) for c, a in result["per_class_acc"].items()},
        "parameters": sum(r["params"] for r in rows),
        "macs": sum(r["macs"] for r in rows),
        "measured_commit": _git_commit(),
        "torch": torch.__version__,
    }
    pretrained.save(folder, model, config, spec, run.record, run.metrics, card)  # the same weights, now with the card
    return pretrained.read_model_dir(folder)[3]


def margins(model: torch.nn.Module, size: int) -> tuple[float, float]:
    """Why the card's accuracy reproduces exactly on any CPU: the smallest gap between an image's top two
    logits over the test set, and the largest fp32 logit's distance from fp64's. With the gap far above the
    error, no prediction can flip between CPUs or kernels that compute in fp32."""
    images, _ = nin.load_fashion_mnist("test")
    with torch.inference_mode():
        fp32 = torch.cat([model(to_inputs(chunk, size)) for chunk in images.split(500)])
        wide = copy.deepcopy(model).double()
        fp64 = torch.cat([wide(to_inputs(chunk, size).double()) for chunk in images.split(500)])
    top2 = fp32.topk(2, dim=1).values
    return float(f"{(top2[:, 0] - top2[:, 1]).min():.3g}"), float(f"{(fp32.double() - fp64).abs().max():.3g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--name", required=True, help="the weights' name: `nin predict --weights NAME`")
    parser.add_argument("--description", required=True, help="one line: the network and its data")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"default {WEIGHTS_DIR}")
    args = parser.parse_args(argv)
    try:
        card = ship(args.run_dir, args.name, args.description, args.out)
        if args.out == WEIGHTS_DIR:
            load_weights(args.name)  # loads back as users will load it
    except NinError as e:
        print(f"ship_weights: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out / args.name}: test accuracy {card['evaluation']['test_acc']:.4f} (fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
