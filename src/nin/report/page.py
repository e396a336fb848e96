"""One self-contained HTML page per run: how it was made (the run record), config, curves, per-class
accuracy, confusion matrix, class maps, and the model comparison when `nin compare` wrote one into the
run directory.

Images are embedded as base64 PNGs and the style is inline, so the page can be mailed or archived
as one file and opens anywhere without the run directory.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nin.data.subsets import few, test_set
from nin.errors import NinError
from nin.inference.cam import check_maps, draw_cams
from nin.inference.evaluate import logits
from nin.io import atomic_write_text
from nin.plots import plot_curves
from nin.training.provenance import machine_line
from nin.training.rundir import RunDir

if TYPE_CHECKING:
    from nin.api import Run

CAM_POOL = 1000  # the correct and wrong examples are the first ones among this many test images
STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.pair{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}.note{color:#666}"""


def report(run: Run, out: Path, data_dir: Path | None = None, device: str = "auto", test_limit: int = 0,
           per_kind: int = 4) -> Path:  # fmt: skip
    """Write the report of a loaded run (`nin.load`) to `out` and return its path."""
    config, history = run.config, run.metrics
    with tempfile.TemporaryDirectory() as tmp:  # the report leaves no other file behind
        result = run.evaluate(data_dir, device, test_limit, plot=Path(tmp) / "confusion_matrix.png")
        confusion = _img(Path(result["confusion_png"]), "confusion matrix")
    run_dir = RunDir(run.path)

    sections = [
        f"<h1>nin run {_e(run.path.name)}</h1>",
        f"<p>Test accuracy <b>{result['test_acc']:.4f}</b> on {result['examples']} {_e(run.spec.dataset)} test "
        "images after "
        f"{len(history)} of {config.epochs} epochs; {sum(m['epoch_seconds'] for m in history):.0f} s of training "
        f"wall time.</p>",
        "<h2>How it was made</h2>" + _record_section(run.record),
        "<h2>Config</h2>" + _table(["setting", "value"], config.to_dict().items()),
        "<h2>Training</h2>"
        + _table(
            ["epoch", "train loss", "train acc", "test acc", "examples/sec", "seconds"],
            [
                (
                    m["epoch"],
                    f"{m['train_loss']:.4f}",
                    f"{m['train_acc']:.4f}",
                    f"{m['test_acc']:.4f}",
                    f"{m['examples_per_sec']:.1f}",
                    f"{m['epoch_seconds']:.1f}",
                )
                for m in history
            ],  # fmt: skip
        )
        + _curves(history, config.epochs),
        "<h2>Test set</h2><div class=pair>"
        + _table(["class", "accuracy"], [(c, f"{a:.4f}") for c, a in result["per_class_acc"].items()])
        + confusion
        + "</div>",
        "<h2>Class activation maps</h2>" + _cam_section(run, data_dir, per_kind),
    ]
    if run_dir.file("compare_json").exists():
        sections.append("<h2>NiN and the classic CNNs</h2>" + _compare_section(run_dir))
    page = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>nin run {_e(run.path.name)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    atomic_write_text(out, page)
    return out


def _record_section(record: dict | None) -> str:
    """One row per session of the run (a resumed run has several): when, where, in what precision."""
    if record is None:
        return "<p class=note>No run record (run.json): the run was made by a nin without them.</p>"
    rows = [
        (s["started"], s["status"], f"{s['epochs_before']} → {s['epochs_after']}", machine_line(s),
         " ".join(s["command"]), "" if s["wall_seconds"] is None else f"{s['wall_seconds']:.0f}")
        for s in record["sessions"]
    ]  # fmt: skip
    return _table(["started", "status", "epochs", "machine and precision", "command", "wall s"], rows)


def _cam_section(run: Run, data_dir: Path | None, per_kind: int) -> str:
    """The first `per_kind` correct and `per_kind` wrong predictions among `CAM_POOL` test images drawn from every
    class."""
    net, size = run.model, run.config.resize
    try:
        check_maps(net, run.checkpoint, size)
    except NinError as e:
        return f"<p class=note>Not drawn: {_e(str(e))}.</p>"
    data = few(test_set(run.config, run.spec, data_dir), CAM_POOL)
    images, labels = data.images, data.labels
    predicted = logits(net, images, size).argmax(dim=1)
    right = (predicted == labels).nonzero().flatten()[:per_kind]
    wrong = (predicted != labels).nonzero().flatten()[:per_kind]
    chosen = torch.cat([right, wrong])
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "cam.png"
        draw_cams(net, size, run.spec.classes, images[chosen], labels[chosen],
                  [f"test image {i}" for i in chosen.tolist()], png)  # fmt: skip
        return (
            f"<p>The first {len(right)} correct and {len(wrong)} wrong predictions among {len(data)} "
            "test images drawn from every class: each class's map is what global average pooling turns into its "
            "score.</p>" + _img(png, "class activation maps")
        )


def _compare_section(run: RunDir) -> str:
    """The table and bar charts `nin compare --out RUN_DIR` left in the run directory."""
    path = run.file("compare_json")
    try:
        result = json.loads(path.read_text())
        recipe, rows = result["recipe"], result["rows"]
        table = _table(
            ["model", "parameters", "MACs/image", "head share", "train s", "test acc", "status"],
            [
                (
                    r["description"],
                    f"{r['params']:,}",
                    f"{r['macs'] / 1e6:,.1f} M",
                    f"{r['head_share']:.1%}",
                    f"{r['train_seconds']:.0f}",
                    f"{r['test_acc']:.4f}",
                    r["status"],
                )
                for r in rows
            ],  # fmt: skip
        )
        budget = (f"{recipe['budget']:,} training images per model at {recipe['resize']}x{recipe['resize']}, "
                  f"batch {recipe['batch_size']}, SGD lr {recipe['lr']} momentum {recipe['momentum']}")  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise NinError(f"{path}: not a comparison written by nin compare ({e}); rerun nin compare --force") from None
    png = run.file("compare_png")
    chart = _img(png, "comparison bar charts") if png.exists() else ""
    return f"<p>From <code>nin compare</code>: {_e(budget)}, on {_e(result.get('device', '?'))}.</p>{table}{chart}"


def _curves(history: list[dict], epochs: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        plot_curves(history, epochs, Path(tmp) / "curves.png")
        return _img(Path(tmp) / "curves.png", "training curves")


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(header: list[str], rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
