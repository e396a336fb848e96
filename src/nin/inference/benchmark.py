"""`nin benchmark`: the forms a trained model can take, measured side by side on this machine's CPU.

The forms: PyTorch eager in fp32, and in bf16 autocast where the CPU computes bf16 natively (AVX-512 BF16, AMX);
the ONNX model `nin export --format onnx` writes, in fp32 and statically quantized to int8, run by
onnxruntime; and the same two ONNX files compiled by OpenVINO, if it is installed. Every form goes through
the same inference path (`logits`: the same test images, brought to the network's input the same way), so
their accuracies compare. The forms take turns call by call (batch 1) and round by round (batches of 256),
so a busy moment on a shared machine falls on all of them alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nin.data.subsets import few, test_set
from nin.errors import NinError
from nin.inference.evaluate import check_test_limit, logits
from nin.inference.export import OnnxModel, to_onnx
from nin.inference.pretrained import WEIGHTS, save
from nin.plots import plot_benchmark
from nin.runtime import cpu_info, local

if TYPE_CHECKING:
    from nin.api import Run

BATCH = 256


class Autocast:
    """A network called in bf16 autocast (nin's one autocast: `Runtime.autocast`), its logits as float32."""

    def __init__(self, net: torch.nn.Module):
        self.net, self.rt = net, local("cpu", "bf16")

    def eval(self) -> Autocast:
        self.net.eval()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.rt.autocast():
            return self.net(x).float()


class OpenVino:
    """An ONNX file compiled by OpenVINO for the CPU, called like the network."""

    def __init__(self, path: Path):
        import openvino

        self.compiled = openvino.Core().compile_model(str(path), "CPU")

    def eval(self) -> OpenVino:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.compiled(x.numpy())[0].copy())


def native_bf16() -> bool:
    return local("cpu", "auto").dtype is not None


def forms(run: Run, folder: Path, data_dir: Path | None) -> tuple[dict[str, tuple[Any, Path]], list[str]]:
    """Each form's callable and the file it is kept in (written into `folder`), and notes on forms left out."""
    save(folder / "model", run.model, run.config, run.spec, run.record, run.metrics)
    weights = folder / "model" / WEIGHTS
    found: dict[str, tuple[Any, Path]] = {"pytorch fp32": (run.model, weights)}
    notes = []
    if native_bf16():  # the weights stay fp32 (autocast): the same file
        found["pytorch bf16"] = (Autocast(run.model), weights)
    else:
        notes.append("pytorch bf16: left out, this CPU has no native bf16 (no AVX-512 BF16 or AMX): emulated, slow")
    try:
        onnx = {precision: to_onnx(run.model, run.config, run.spec, folder / f"model-{precision}.onnx", run.record,
                                   run.metrics, quantize, data_dir)
                for precision, quantize in (("fp32", None), ("int8", "int8"))}  # fmt: skip
        found |= {f"onnx {precision}": (OnnxModel(path), path) for precision, path in onnx.items()}
    except NinError as e:
        if "export extra" not in str(e):
            raise
        return found, [*notes, f"onnx: left out ({e})"]
    compiled, more = openvino_forms(onnx)
    return found | compiled, notes + more


def openvino_forms(onnx: dict[str, Path]) -> tuple[dict[str, tuple[Any, Path]], list[str]]:
    """The ONNX files (by precision) compiled by OpenVINO, and notes on those it left out: all when it is not
    installed, one when its CPU plugin cannot compile it (an operation without a kernel for this CPU)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {}, ["openvino: left out, not installed (pip install openvino)"]
    found, notes = {}, []
    for precision, path in onnx.items():
        try:
            found[f"openvino {precision}"] = (OpenVino(path), path)
        except RuntimeError as e:  # OpenVINO's error for a model it cannot compile: its last line says why
            why = [line for line in str(e).splitlines() if line.strip()][-1][:200]
            notes.append(f"openvino {precision}: left out, OpenVINO cannot compile it for this CPU ({why})")
    return found, notes


def benchmark(run: Run, data_dir: str | Path | None = None, repeats: int = 200, rounds: int = 20,
              test_limit: int = 0, plot: str | Path | None = None) -> dict:  # fmt: skip
    """Every form of `run`'s model: accuracy on the held-out test images (the first `test_limit`), its file's
    size, batch-1 latency over `repeats` calls (median, min, max) and throughput over `rounds` batches of 256
    (images/s); the CPU, and the fastest form. `plot`: latency and throughput drawn to that PNG."""
    check_test_limit(test_limit)
    for flag, n in (("--repeats", repeats), ("--rounds", rounds)):
        if n < 1:
            raise NinError(f"{flag} {n}: give 1 or more")
    data = test_set(run.config, run.spec, Path(data_dir) if data_dir else None)
    data = few(data, test_limit)  # every class in proportion, as evaluate draws; a streamed run's decoded here
    size = run.config.resize
    one, many = data.images[:1], data.images[:BATCH]
    with tempfile.TemporaryDirectory() as tmp:
        found, notes = forms(run, Path(tmp), Path(data_dir) if data_dir else None)
        latency: dict[str, list[float]] = {name: [] for name in found}
        rate: dict[str, list[float]] = {name: [] for name in found}
        for form, _ in found.values():  # warm-up: the first calls allocate and choose kernels
            logits(form, one, size), logits(form, many, size)
        for _ in range(repeats):
            for name, (form, _) in found.items():
                latency[name].append(_timed(form, one, size))
        for _ in range(rounds):
            for name, (form, _) in found.items():
                rate[name].append(len(many) / _timed(form, many, size))
        rows = [{"form": name, "bytes": path.stat().st_size,
                 "test_acc": (logits(form, data.images, size).argmax(1) == data.labels).sum().item() / len(data),
                 "latency_ms": _spread([s * 1e3 for s in latency[name]]), "images_per_sec": _spread(rate[name])}
                for name, (form, path) in found.items()]  # fmt: skip
    cpu = cpu_info()
    result = {
        "model": run.card["name"] if run.card else str(run.path),
        "dataset": run.spec.dataset,
        "input": f"{run.spec.channels}x{size}x{size}",
        "machine": machine(cpu),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "examples": len(data),
        "repeats": repeats,
        "rounds": rounds,
        "batch": len(many),
        "forms": rows,
        "fastest": {
            "batch 1": min(rows, key=lambda r: r["latency_ms"]["median"])["form"],
            f"batch {len(many)}": max(rows, key=lambda r: r["images_per_sec"]["median"])["form"],
        },  # fmt: skip
        "notes": notes,
    }
    if plot:
        plot_benchmark(rows, Path(plot), f"{result['model']} on {result['machine']}")
    return result


def _timed(form: Any, images: torch.Tensor, size: int) -> float:
    start = time.perf_counter()
    logits(form, images, size)
    return time.perf_counter() - start


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine(cpu: dict) -> str:
    """'2-core AMD EPYC (AVX2, VNNI, AVX-512 BF16; no AMX)': the CPU, and what it computes natively."""
    names = {"avx2": "AVX2", "vnni": "VNNI", "avx512_bf16": "AVX-512 BF16", "amx": "AMX"}
    has = [label for key, label in names.items() if cpu.get(key)]
    lacks = [label for key, label in names.items() if not cpu.get(key)]
    return f"{cpu['cpu_count']}-core {cpu['cpu']} ({', '.join(has) or 'none of AVX2, VNNI, BF16, AMX'}" + (
        f"; no {', '.join(lacks)})" if lacks else ")"
    )


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for name in ("onnxruntime", "openvino"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    return found


def render(result: dict) -> str:
    """The table `nin benchmark` prints."""
    lines = [
        f"{result['model']} ({result['dataset']}, input {result['input']}) on {result['machine']}, "
        f"{result['threads']} threads; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"accuracy on {result['examples']:,} test images; batch-1 latency over {result['repeats']} calls; "
        f"batch-{result['batch']} throughput over {result['rounds']} rounds",
        f"{'form':<14}{'bytes':>10}{'test acc':>10}{'latency median':>16}{'min':>12}{'max':>12}{'images/s':>11}",
    ]
    for r in result["forms"]:
        ms = r["latency_ms"]
        lines.append(f"{r['form']:<14}{r['bytes']:>10,}{r['test_acc']:>10.4f}{ms['median']:>13.3f} ms"
                     f"{ms['min']:>9.3f} ms{ms['max']:>9.3f} ms{r['images_per_sec']['median']:>11,.0f}")  # fmt: skip
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append("fastest: " + ", ".join(f"{form} at {at}" for at, form in result["fastest"].items()))
    return "\n".join(lines)
