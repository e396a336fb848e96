"""What a trained model is, in one table: the fields of config.json in the directory form (nin/inference/
pretrained.py), of an exported ONNX model's metadata and of a checkpoint's `data` entry, all built by `describe`;
and the network a checkpoint's contents describe (`model_from_state`).

The names follow the Hugging Face convention where it has one (`id2label`, `label2id`, `num_classes`,
`in_channels`), so tools that read config.json find the class names where they look for them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nin.config import Config, from_dict
from nin.data.types import Spec
from nin.errors import NinError
from nin.models.nin import NiN
from nin.models.registry import build
from nin.version import __version__

FORMAT = "nin-model-v1"
# the fields that say how to rebuild and feed the network: a loader recomputes them and compares
STRUCTURE = (
    "arch",
    "width",
    "in_channels",
    "num_classes",
    "id2label",
    "label2id",
    "input_size",
    "mean",
    "std",
    "dataset",
    "preprocessing",  # compared where a description has it: those written before it imply squash
)


def describe(config: Config, spec: Spec, weights: dict[str, torch.Tensor], record: dict | None = None,
             metrics: list[dict] | None = None) -> dict:  # fmt: skip
    """The model trained with `config` on `spec`'s data, whose state_dict is `weights`: how to rebuild it
    (arch, width, channels, classes), how to feed it (float images (N, C, H, W) in [0, 1] of `input_size`;
    a normalising network's `mean` and `std` are applied inside it), its data, and where it came from (the
    preset, seed and last test accuracy, and the commit and machine of the run `record`'s first session)."""
    normalize = "0.mean" in weights  # a Normalize layer first: its buffers hold the training set's statistics
    sessions = (record or {}).get("sessions") or [{}]
    command = sessions[0].get("command") or []
    return {
        "format": FORMAT,
        "arch": config.arch,
        "width": config.width,
        "in_channels": spec.channels,
        "num_classes": len(spec.classes),
        "id2label": {str(i): name for i, name in enumerate(spec.classes)},
        "label2id": {name: i for i, name in enumerate(spec.classes)},
        "input_size": [spec.channels, config.resize, config.resize],
        "input_range": [0.0, 1.0],
        "mean": weights["0.mean"].flatten().tolist() if normalize else None,
        "std": weights["0.std"].flatten().tolist() if normalize else None,
        "dataset": spec.dataset,
        "preprocessing": spec.preprocess(config.resize).to_dict(),  # how a file becomes `input_size`
        "image_size": spec.size,
        "data_dir": spec.data_dir,
        "nin_version": __version__,
        "source": {
            "preset": command[command.index("--preset") + 1] if "--preset" in command[:-1] else None,
            "command": command or None,
            "seed": config.seed,
            "test_acc": metrics[-1]["test_acc"] if metrics else None,
            "nin_commit": sessions[0].get("nin_commit"),
            "machine": sessions[0].get("gpu") or sessions[0].get("cpu"),
        },
        "training": config.to_dict(),
    }


def mismatches(found: dict, expected: dict) -> list[str]:
    """The `STRUCTURE` fields in which a description read from a file differs from the one its weights give."""
    implied = {"preprocessing"} - set(found)  # absent from descriptions written before it: they imply squash
    return [key for key in STRUCTURE if found.get(key) != expected.get(key) and key not in implied]


def model_from_state(state: dict, path: Path) -> tuple[NiN, Config, Spec]:
    """The trained network (in eval mode, on the CPU), the config it was trained with and its data's spec,
    from the contents of the checkpoint file `path` (named in errors)."""
    config = from_dict(state["config"], source=str(path))
    spec = Spec.from_dict(state.get("data"), path)
    net = build(config.arch, config.dropout, config.width, spec.channels, len(spec.classes), config.normalize)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise NinError(f"{path}: weights do not fit the {config.arch} model ({str(e).splitlines()[0]})") from None
    return net.eval(), config, spec
