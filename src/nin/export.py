"""Taking a trained NiN out of nin: an ONNX model that onnxruntime runs without PyTorch.

The exporter is PyTorch's dynamo-based one (`torch.onnx.export(..., dynamo=True)`, with onnxscript).
Both exporters were measured on the fast preset's network (1,000 test images through onnxruntime):
TorchScript's exported in 0.1 s, dynamo's in 3.4 s, and both agreed with PyTorch to 4e-6 with the same
predictions. The dynamo exporter is the maintained one (the TorchScript-based exporter is deprecated),
so it is the one used; its 3 s happen once per export.
"""

from __future__ import annotations

import json
import logging
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

    # the exporter logs a warning per torchvision operator it cannot register; nin uses none of them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
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


class OnnxModel:
    """An exported ONNX model run by onnxruntime, called like the network it came from: float images
    (N, 1, H, W) in, logits out; `resize` is its input side length, from the model's metadata."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise NinError(f"running an ONNX model needs onnxruntime: {EXTRA}") from None
        ort = onnxruntime.capi.onnxruntime_pybind11_state  # its errors derive from Exception alone
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.resize = json.loads(self.session.get_modelmeta().custom_metadata_map["input_size"])[-1]
        except (ort.Fail, ort.InvalidProtobuf, ort.InvalidGraph, ort.NoSuchFile, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise NinError(f"{path}: not an ONNX model written by nin export ({first})") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"images": images.numpy()})[0])

    def eval(self) -> OnnxModel:
        return self
