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
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from nin.config import Config
from nin.data.preprocess import Preprocess, to_inputs
from nin.data.subsets import few, load_part
from nin.data.types import Spec
from nin.errors import NinError
from nin.inference.description import FORMAT, describe
from nin.io import atomic_write_bytes

EXTRA = "pip install 'nin[export]' (onnx, onnxscript and onnxruntime)"


CALIBRATION = 300  # training images int8 quantization calibrates activation ranges on


def to_onnx(model: nn.Module, config: Config, spec: Spec, path: Path, record: dict | None = None,
            metrics: list[dict] | None = None, quantize: str | None = None,
            data_dir: str | Path | None = None) -> Path:  # fmt: skip
    """Write `model` as one self-contained ONNX file: input `images`, float32 (N, C, H, W) in [0, 1] at
    the run's input size (N free; a normalising run's mean and std are inside the graph), output `logits`
    (N, classes); the model's description (nin/inference/description.py: classes, input size, data, where
    it came from) in its metadata, one JSON value per field. With `quantize="int8"`: onnxruntime's static
    quantization (7-bit int8 weights per channel, uint8 activations, QDQ format: the same integers on every
    x86 CPU), its activation ranges calibrated on `CALIBRATION` training images (from `data_dir`, else where
    the run found them)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise NinError(f"ONNX export needs the export extra: {EXTRA}") from None

    calibration = _calibration_images(config, spec, data_dir) if quantize else None  # bad data: before the export
    # the exporter logs a warning per torchvision operator it cannot register; nin uses none of them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = torch.zeros(2, spec.channels, config.resize, config.resize)
    with warnings.catch_warnings():  # torch's exporter calls its own deprecated pytree API: nothing for the user to do
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        program = torch.onnx.export(model.eval(), (example,), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                    verbose=False)  # fmt: skip
    proto = program.model_proto
    if calibration is not None:
        proto = _int8(proto, calibration)
    description = describe(config, spec, model.state_dict(), record, metrics)
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in description.items()})
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def _calibration_images(config: Config, spec: Spec, data_dir: str | Path | None) -> torch.Tensor:
    """`CALIBRATION` training images drawn from every class, as the network takes them: through its
    preprocessing (a streamed run's decoded here as held-out images: memory bounded by the sample)."""
    data_dir = data_dir or spec.data_dir
    train = load_part(config, "train", data_dir, stream=spec.crop == "center")
    train = spec.check(train, str(data_dir or f"the {config.dataset} data"))
    return to_inputs(few(train, CALIBRATION).images, config.resize)


def _int8(proto: object, images: torch.Tensor) -> object:
    """The fp32 ONNX model `proto` quantized by onnxruntime (pre-processed first: shapes inferred, BatchNorm
    folded into the convolutions), calibrated on `images` by their activations' min and max."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images.split(100))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, ready, int8 = (Path(tmp) / name for name in ("fp32.onnx", "ready.onnx", "int8.onnx"))
        onnx.save(proto, fp32)
        quant_pre_process(str(fp32), str(ready))
        # reduce_range: 7-bit weights ([-64, 64]). Without VNNI, onnxruntime's uint8 x int8 kernels add pairs of
        # products in int16, which saturate on full-range weights (255 * 127 * 2 > 32,767): an export made on a
        # VNNI CPU lost 0.85 points on an AVX2-only one. With 7 bits every x86 CPU computes the same integers.
        quantize_static(str(ready), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)  # fmt: skip
        return onnx.load(int8)


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
            description = {key: json.loads(value) for key, value in meta.items()}
            if description.get("format") != FORMAT:
                raise KeyError(f"no format '{FORMAT}' in its metadata")
            self.resize, self.spec = description["input_size"][-1], Spec.from_dict(description)
            self.preprocess: Preprocess = self.spec.preprocess(self.resize)
        except (ort.Fail, ort.InvalidProtobuf, ort.InvalidGraph, ort.NoSuchFile, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise NinError(f"{path}: not an ONNX model written by nin export ({first})") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"images": images.numpy()})[0])

    def eval(self) -> OnnxModel:
        return self
