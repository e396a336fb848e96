"""Trained weights that ship with nin, each with its model card, usable right after `pip install`.

Each is a directory nin/inference/weights/NAME/ in the directory form of nin/inference/pretrained.py:
model.safetensors (fp32), config.json (the model's description, the run's config, metrics and record, the
SHA-256 of model.safetensors, checked on every load, and `evaluation`: the test accuracy measured in fp32 on
the CPU from the weights file itself, parameters, MACs) and README.md (the model card). Adding weights is
dropping such a directory in; benchmarks/ship_weights.py writes one from a trained run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from nin.config import Config
from nin.data.types import Spec
from nin.errors import NinError
from nin.inference.pretrained import CONFIG, WEIGHTS, read_model_dir
from nin.models.nin import NiN

WEIGHTS_DIR = Path(__file__).parent / "weights"


def names() -> list[str]:
    """The shipped weights' names (one per directory with a config.json in nin/inference/weights/)."""
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONFIG).is_file()) if WEIGHTS_DIR.is_dir() else []


def path_of(name: str) -> Path:
    """The directory of the shipped weights `name`."""
    if name not in names():
        raise NinError(f"no shipped weights named {name!r}; choose from {', '.join(names()) or 'none'} "
                       "(`nin weights` shows their model cards)")  # fmt: skip
    return WEIGHTS_DIR / name


def card(name: str) -> dict:
    """The model card of the shipped weights `name` (its config.json): one of `names()`, so that no other path
    is ever read."""
    return json.loads((path_of(name) / CONFIG).read_text())


def read_shipped(name: str) -> tuple[NiN, Config, Spec, dict]:
    """The shipped weights `name`: (network, config, spec, model card), checked against the card's SHA-256."""
    return read_model_dir(path_of(name), hint="reinstall nin to get the shipped weights back")


def render(info: dict) -> str:
    """A model card as text, as `nin weights` prints it."""
    session, measured, training = info["record"]["sessions"][0], info["evaluation"], info["training"]
    classes = list(info["id2label"].values())
    lines = [
        f"{info['name']}: {info['description']}",
        f"  dataset        {info['dataset']} ({len(classes)} classes: {', '.join(classes)})",
        f"  test accuracy  {measured['test_acc']:.4f} ({measured['test_correct']:,} of {measured['test_images']:,} "
        f"test images; {measured['evaluated']}; smallest top-2 logit gap {measured['smallest_top2_gap']:.1e}, fp32 "
        f"error {measured['fp32_error']:.1e}: the same on any CPU)",
        f"  network        {info['arch']}, width {info['width']}, input {'x'.join(map(str, info['input_size']))}: "
        f"{measured['parameters']:,} parameters, {measured['macs']:,} MACs per image",
        f"  trained by     {' '.join(info['source']['command'])} (seed {training['seed']}, {session['precision']}, "
        f"{session['wall_seconds']:.0f} s on {session['cpu'] if session['device'] == 'cpu' else session['device']}, "
        f"torch {session['torch']})",
        f"  nin commit     {info['source']['nin_commit']} (trained), {measured['measured_commit']} (card measured)",
        f"  weights        {info['name']}/{WEIGHTS}, {(WEIGHTS_DIR / info['name'] / WEIGHTS).stat().st_size:,} bytes, "
        f"SHA-256 {info['sha256']}",
    ]
    return "\n".join(lines)
