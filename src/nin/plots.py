"""PNG figures: training curves (like d2l's Animator), the confusion matrix, class activation maps, the
model comparison."""

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
