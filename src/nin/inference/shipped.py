"""Trained weights that ship with nin, each with its model card, usable right after `pip install`.

Each is two files in nin/inference/weights/: NAME.pt, the network's plain state_dict (fp32), and NAME.json, its model
card: dataset, classes, test accuracy measured in fp32 on the CPU from NAME.pt itself, parameters, MACs, the
command and seed that trained it, the run's config, metrics and record (run.json), and the SHA-256 of NAME.pt,
checked on every load. Adding weights is dropping those two files in; benchmarks/ship_weights.py writes them
from a trained run directory.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from nin.errors import NinError

WEIGHTS_DIR = Path(__file__).parent / "weights"


def names() -> list[str]:
    """The shipped weights' names (one per model card in nin/weights/)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))


def card(name: str) -> dict:
    """The model card of the shipped weights `name`: one of `names()`, so that no other path is ever read."""
    path = WEIGHTS_DIR / f"{name}.json"
    if name not in names():
        raise NinError(f"no shipped weights named {name!r}; choose from {', '.join(names()) or 'none'} "
                       "(`nin weights` shows their model cards)")  # fmt: skip
    return json.loads(path.read_text())


def read(name: str) -> tuple[dict, dict, Path]:
    """The shipped weights `name`: (the state `model_from_state` takes, the model card, the weights file), after
    checking the weights file against the SHA-256 on the model card."""
    info = card(name)
    path = WEIGHTS_DIR / info["weights"]
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise NinError(f"{path}: its SHA-256 differs from the one on its model card ({name}.json), so the file "
                       "was changed or damaged; reinstall nin to get the shipped weights back")  # fmt: skip
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return {"model": state, "config": info["config"], "data": info["data"]}, info, path


def render(info: dict) -> str:
    """A model card as text, as `nin weights` prints it."""
    session = info["record"]["sessions"][0]
    lines = [
        f"{info['name']}: {info['description']}",
        f"  dataset        {info['dataset']} ({len(info['classes'])} classes: {', '.join(info['classes'])})",
        f"  test accuracy  {info['test_acc']:.4f} ({info['test_correct']:,} of {info['test_images']:,} test images; "
        f"{info['evaluated']}; smallest top-2 logit gap {info['smallest_top2_gap']:.1e}, fp32 error "
        f"{info['fp32_error']:.1e}: the same on any CPU)",
        f"  network        {info['config']['arch']}, width {info['config']['width']}, input "
        f"{'x'.join(map(str, info['input']))}: {info['parameters']:,} parameters, {info['macs']:,} MACs per image",
        f"  trained by     {info['command']} (seed {info['seed']}, {session['precision']}, "
        f"{session['wall_seconds']:.0f} s on {session['cpu'] if session['device'] == 'cpu' else session['device']}, "
        f"torch {session['torch']})",
        f"  nin commit     {info['nin_commit']} (trained), {info['measured_commit']} (card measured)",
        f"  weights        {info['weights']}, {info['weights_bytes']:,} bytes, SHA-256 {info['sha256']}",
    ]
    return "\n".join(lines)
