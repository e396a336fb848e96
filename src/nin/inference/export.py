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
from nin.data.types import Spec
from nin.errors import NinError
from nin.io import atomic_write_bytes

EXTRA = "pip install 'nin[export]' (onnx, onnxscript and onnxruntime)"


def to_onnx(model: nn.Module, config: Config, spec: Spec, path: Path) -> Path:
    """Write `model` as one self-contained ONNX file: input `images`, float32 (N, C, H, W) in [0, 1] at
    the run's input size (N free; a normalising run's mean and std are inside the graph), output `logits`
    (N, classes); class names, input size, dataset, stored image size and nin version in its metadata."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise NinError(f"ONNX export needs the export extra: {EXTRA}") from None
    from nin.version import __version__

    # the exporter logs a warning per torchvision operator it cannot register; nin uses none of them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = torch.zeros(2, spec.channels, config.resize, config.resize)
    program = torch.onnx.export(model.eval(), (example,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                verbose=False)  # fmt: skip
    proto = program.model_proto
    metadata = {
        "class_names": json.dumps(spec.classes),
        "input_size": json.dumps([spec.channels, config.resize, config.resize]),
        "input_range": "[0, 1]: pixel / 255" + ("; normalised inside the graph" if config.normalize else ""),
        "dataset": spec.dataset,
        "image_size": json.dumps(spec.size),  # images are brought to this size first, then resized to input_size
        "arch": config.arch,
        "nin_version": __version__,
    }
    onnx.helper.set_model_props(proto, metadata)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


class OnnxModel:
    """An exported ONNX model run by onnxruntime, called like the network it came from: float images
    (N, C, H, W) in, logits out; `resize` is its input side length and `spec` its data's, from the metadata."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise NinError(f"running an ONNX model needs onnxruntime: {EXTRA}") from None
        ort = onnxruntime.capi.onnxruntime_pybind11_state  # its errors derive from Exception alone
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            meta = self.session.get_modelmeta().custom_metadata_map
            channels, _, self.resize = json.loads(meta["input_size"])
            self.spec = Spec(meta["dataset"], tuple(json.loads(meta["class_names"])), channels,
                             json.loads(meta.get("image_size", "28")))  # fmt: skip
        except (ort.Fail, ort.InvalidProtobuf, ort.InvalidGraph, ort.NoSuchFile, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise NinError(f"{path}: not an ONNX model written by nin export ({first})") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"images": images.numpy()})[0])

    def eval(self) -> OnnxModel:
        return self
