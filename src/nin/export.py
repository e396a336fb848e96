"""Taking a trained NiN out of nin: an ONNX model that onnxruntime runs without PyTorch.

The exporter is PyTorch's dynamo-based one (`torch.onnx.export(..., dynamo=True)`, with onnxscript).
Both exporters were measured on the fast preset's network (1,000 test images through onnxruntime):
TorchScript's exported in 0.1 s, dynamo's in 3.4 s, and both agreed with PyTorch to 4e-6 with the same
predictions. The dynamo exporter is the maintained one (the TorchScript-based exporter is deprecated),
so it is the one used; its 3 s happen once per export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from nin.config import Config
from nin.data import CLASS_NAMES
from nin.errors import NinError
from nin.io import atomic_write_bytes

EXTRA = "pip install 'nin[export]' (onnx, onnxscript and onnxruntime)"


def to_onnx(model: nn.Module, config: Config, path: Path) -> Path:
    """Write `model` as one self-contained ONNX file: input `images`, float32 (N, 1, H, W) in [0, 1] at
    the run's input size (N free), output `logits` (N, 10); class names, input size, dataset and nin
    version in the model's metadata."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise NinError(f"ONNX export needs the export extra: {EXTRA}") from None
    from nin import __version__

    example = torch.zeros(2, 1, config.resize, config.resize)
    program = torch.onnx.export(model.eval(), (example,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                verbose=False)  # fmt: skip
    proto = program.model_proto
    metadata = {
        "class_names": json.dumps(CLASS_NAMES),
        "input_size": json.dumps([1, config.resize, config.resize]),
        "input_range": "[0, 1]: pixel / 255, no normalisation",
        "dataset": "fashion-mnist",
        "arch": config.arch,
        "nin_version": __version__,
    }
    onnx.helper.set_model_props(proto, metadata)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def onnx_logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    """The logits onnxruntime computes for float `images` (N, 1, H, W) with the ONNX file `path`."""
    try:
        import onnxruntime
    except ImportError:
        raise NinError(f"running an ONNX model needs onnxruntime: {EXTRA}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
