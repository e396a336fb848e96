"""PNG figures: training curves (like d2l's Animator), the confusion matrix, class activation maps, the
model comparison, a tuning study, a model's forms benchmarked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nin.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> Figure:
    """A figure without pyplot (no GUI backend, no global state). matplotlib is imported here, when a
    figure is drawn, so that `import nin` and `nin --help` stay light."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_curves(history: list[dict], epochs: int, path: Path) -> None:
    """Train loss, train acc and test acc against epoch, on d2l's axes (x from 1 to the last epoch)."""
    fig = _figure((4.5, 3.2))
    ax = fig.subplots()
    x = [m["epoch"] for m in history]
    for key, style in (("train_loss", "-"), ("train_acc", "m--"), ("test_acc", "g-.")):
        ax.plot(x, [m[key] for m in history], style, marker="o", markersize=3, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(epochs, 2))
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_confusion(matrix: torch.Tensor, class_names: tuple[str, ...], path: Path, title: str = "") -> None:
    """Rows: true class, columns: predicted class; each cell holds its count."""
    fig = _figure((7.5, 6.5))
    ax = fig.subplots()
    ax.imshow(matrix.tolist(), cmap="Blues")
    n = len(class_names)
    small = {"fontsize": 7 if n <= 20 else 3}  # CIFAR-100: 100 names, and no counts in the cells
    ax.set_xticks(range(n), class_names, rotation=45 if n <= 20 else 90, ha="right", **small)
    ax.set_yticks(range(n), class_names, **small)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max().item() / 2
    for i in range(n if n <= 20 else 0):
        for j in range(n):
            count = int(matrix[i, j])
            ax.text(
                j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > threshold else "black"
            )
    _save(fig, path)


def plot_cams(
    images: torch.Tensor,
    heat: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor | None,
    names: list[str],
    class_names: tuple[str, ...],
    path: Path,
) -> None:
    """One row per image (float (B, C, H, W) in [0, 1]): the input, then the class map of the predicted class
    and (when known) of the true class over it. Both maps of a row share one colour scale, so their
    strengths compare."""
    images = images.permute(0, 2, 3, 1).numpy() if images.shape[1] == 3 else images[:, 0].numpy()
    heat = heat.numpy()
    columns = 2 if labels is None else 3
    fig = _figure((2.2 * columns, 2.3 * len(images)))
    axes = fig.subplots(len(images), columns, squeeze=False)
    for i, row in enumerate(axes):
        predicted = int(probs[i].argmax())
        shown = [predicted] if labels is None else [predicted, int(labels[i])]
        low, high = heat[i, shown].min().item(), heat[i, shown].max().item()
        row[0].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        row[0].set_title(names[i][-28:], fontsize=7)
        for ax, c, what in zip(row[1:], shown, ("predicted", "true")):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            ax.imshow(heat[i, c], cmap="jet", alpha=0.5, vmin=low, vmax=high)
            ok = "" if labels is None or what == "predicted" or c == predicted else " (missed)"
            ax.set_title(f"{what}: {class_names[c]} {probs[i, c]:.2f}{ok}", fontsize=7)
        for ax in row:
            ax.axis("off")
    _save(fig, path)


def plot_compare(rows: list[dict], path: Path, budget: str) -> None:
    """Three bar charts side by side, one bar per model: test accuracy, parameters, training seconds."""
    fig = _figure((11, 0.45 * len(rows) + 1.2))
    axes = fig.subplots(1, 3, sharey=True)
    names = [r["model"] for r in rows][::-1]  # first row on top
    panels = (("test_acc", "test accuracy", "{:.3f}"), ("params", "parameters (log)", "{:,.0f}"),
              ("train_seconds", "training seconds", "{:.0f}"))  # fmt: skip
    for ax, (key, label, fmt) in zip(axes, panels):
        values = [r[key] for r in rows][::-1]
        bars = ax.barh(names, values, color=["tab:green" if n.startswith("nin") else "tab:gray" for n in names])
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7, padding=2)
        ax.set_xlabel(label)
        ax.margins(x=0.3)
        if key == "params":
            ax.set_xscale("log")
    fig.suptitle(f"Same budget for every model: {budget}", fontsize=10)
    _save(fig, path)


def plot_tune(history: list[dict], importances: dict[str, float], path: Path, title: str) -> None:
    """A study's history (each trial's validation accuracy, pruned ones at their last epoch's, and the best so
    far) beside its settings' importances."""
    fig = _figure((10, 3.6))
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    best, line = None, []
    for state, style in (("complete", "o"), ("pruned", "x")):
        rows = [r for r in history if r["state"] == state and (r["val_acc"] or r["last_val_acc"]) is not None]
        left.plot([r["trial"] for r in rows], [r["val_acc"] or r["last_val_acc"] for r in rows], style, label=state,
                  color="tab:blue" if state == "complete" else "tab:gray")  # fmt: skip
    for r in sorted(history, key=lambda r: r["trial"]):
        if r["state"] == "complete":
            best = r["val_acc"] if best is None else max(best, r["val_acc"])
        if best is not None:
            line.append((r["trial"], best))
    if line:
        left.step(*zip(*line), where="post", color="tab:orange", label="best so far")
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    left.set_xlabel("trial")
    left.set_ylabel("validation accuracy")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    names = sorted(importances, key=importances.get)
    if names:
        bars = right.barh(names, [importances[n] for n in names], color="tab:green")
        right.bar_label(bars, [f"{importances[n]:.2f}" for n in names], fontsize=7, padding=2)
        right.margins(x=0.25)
    else:
        right.text(0.5, 0.5, "importances: from 10\ncomplete trials on", ha="center", va="center")
        right.set_axis_off()
    right.set_xlabel("importance (share of the score's variation)")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_benchmark(rows: list[dict], path: Path, title: str) -> None:
    """Two bar charts, one bar per form of the model: batch-1 latency (median, min to max) and throughput."""
    fig = _figure((10, 0.45 * len(rows) + 1.4))
    latency, throughput = fig.subplots(1, 2, sharey=True)
    names = [r["form"] for r in rows][::-1]  # first row on top
    ms = [r["latency_ms"]["median"] for r in rows][::-1]
    spread = [[m - r["latency_ms"]["min"] for m, r in zip(ms, rows[::-1])],
              [r["latency_ms"]["max"] - m for m, r in zip(ms, rows[::-1])]]  # fmt: skip
    bars = latency.barh(names, ms, xerr=spread, color="tab:blue", error_kw={"elinewidth": 0.8})
    latency.bar_label(bars, [f"{v:.3f}" for v in ms], fontsize=7, padding=8)
    latency.set_xlabel("batch-1 latency, ms (median; min to max)")
    rate = [r["images_per_sec"]["median"] for r in rows][::-1]
    bars = throughput.barh(names, rate, color="tab:green")
    throughput.bar_label(bars, [f"{v:,.0f}" for v in rate], fontsize=7, padding=2)
    throughput.set_xlabel("images/s in batches (median)")
    for ax in (latency, throughput):
        ax.margins(x=0.3)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
