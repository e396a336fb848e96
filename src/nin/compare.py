"""`nin compare`: NiN against the classic CNNs it replaces, and d2l's NiN exercises, on one budget.

Every model sees the same training images in the same seeded order, resized to the same size, the
same number of them (the budget), with the same optimizer, learning rate and batch size: one
recipe, so differences come from the architectures. Each row records parameters, MACs per image,
the share of parameters in the classifier head, training wall time and test accuracy.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nin.classic import alexnet, lenet, vgg11
from nin.data import Batches, load_fashion_mnist
from nin.errors import NinError
from nin.io import atomic_write_text
from nin.model import MAX_RESIZE, NiN, init_kaiming, init_weights, layer_summary, min_resize
from nin.plots import plot_compare
from nin.runtime import Runtime, setup, sync
from nin.train import EXPLODED, at_chance, evaluate_accuracy


def nin_fc_head(resize: int) -> nn.Sequential:
    """d2l NiN exercise 3: the class maps go through a fully connected layer instead of global
    average pooling (an `nn.Sequential` with NiN's layers up to the class maps, then Flatten + Linear)."""
    maps = NiN()[:-2]
    with torch.no_grad():
        size = maps(torch.zeros(1, 1, resize, resize)).numel()
    return nn.Sequential(*maps, nn.Flatten(), nn.Linear(size, 10))


# name -> (what it is, builder taking the input size). LeNet's sigmoids get d2l's Xavier init, the
# ReLU networks Kaiming init (with Xavier, NiN sits at ln(10) at small sizes: see presets/quick.toml).
MODELS: dict[str, tuple[str, Callable[[int], nn.Module]]] = {
    "lenet": ("LeNet (d2l 7.6)", lenet),
    "alexnet": ("AlexNet (d2l 8.1)", alexnet),
    "vgg11": ("VGG-11, channels / 4 as d2l trains it (d2l 8.2)", lambda r: vgg11(r, ratio=4)),
    "nin": ("NiN (d2l 8.3, the seed)", lambda r: NiN()),
    "nin-1conv": ("NiN, one 1x1 conv per block (exercise 1)", lambda r: NiN(mlp_layers=1)),
    "nin-3conv": ("NiN, three 1x1 convs per block (exercise 1)", lambda r: NiN(mlp_layers=3)),
    "nin-3x3": ("NiN, 3x3 convs instead of 1x1 (exercise 2)", lambda r: NiN(mlp_kernel=3)),
    "nin-fc": ("NiN, a dense layer instead of GAP (exercise 3)", nin_fc_head),
}


@dataclass
class Recipe:
    """The shared training budget and recipe (defaults: the quick preset's optimizer)."""

    budget: int = 30_000  # training images seen per model
    resize: int = 99  # the smallest size at which NiN's class maps are more than 1x1 (2x2)
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    test_limit: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise NinError(f"--budget {self.budget}: give the number of training images per model, e.g. 30000")
        if self.batch_size < 1:
            raise NinError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0 or not 0 <= self.momentum < 1:
            raise NinError(f"--lr must be positive and --momentum in [0, 1), got {self.lr} and {self.momentum}")
        if self.test_limit < 0:
            raise NinError(f"--test-limit must be 0 (all) or positive, got {self.test_limit}")
        if self.resize > MAX_RESIZE:
            raise NinError(f"--resize {self.resize} is larger than {MAX_RESIZE}; the images are only 28x28")


def head_params(net: nn.Module) -> int:
    """Parameters after the last pooling stage: the dense layers of LeNet/AlexNet/VGG; NiN's last
    mlpconv block (which makes the class maps) and whatever turns the maps into scores."""
    children = list(net.children())
    pools = (nn.MaxPool2d, nn.AvgPool2d)
    last = max(i for i, c in enumerate(children) if any(isinstance(m, pools) for m in c.modules()))
    return sum(p.numel() for c in children[last + 1 :] for p in c.parameters())


def compare(names: list[str], recipe: Recipe, out_dir: Path, data_dir: Path | None = None) -> list[dict]:
    """Train each named model on the recipe's budget; write compare.json, compare.md and compare.png."""
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise NinError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name in names:
        if recipe.resize < (smallest := min_resize(MODELS[name][1](max(recipe.resize, 224)))):
            raise NinError(f"--resize {recipe.resize} is too small for {name}; it needs at least {smallest}")
    rt = setup(recipe.device, recipe.precision)
    if rt.world_size > 1:
        raise NinError("nin compare runs in one process; start it with python -m nin or nin, not torchrun")
    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    if recipe.test_limit:
        test_x, test_y = test_x[: recipe.test_limit], test_y[: recipe.test_limit]
    train_iter = Batches(train_x, train_y, recipe.batch_size, recipe.resize, rt.device, shuffle=True, seed=recipe.seed)
    test_iter = Batches(test_x, test_y, 500, recipe.resize, rt.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = f"{recipe.resize}x{recipe.resize}"
    print(f"{len(names)} models, {recipe.budget} training images each at {size} on {rt.device}")

    rows = []
    for name in names:
        title, build = MODELS[name]
        torch.manual_seed(recipe.seed)
        net = build(recipe.resize)
        net.apply(init_weights if name == "lenet" else init_kaiming)
        summary = layer_summary(net, recipe.resize)
        params = sum(p.numel() for p in net.parameters())
        net = net.to(rt.device, memory_format=torch.channels_last)
        images, seconds, loss, status = fit(net, train_iter, recipe, rt)
        start = time.perf_counter()
        acc = evaluate_accuracy(net, test_iter, rt)
        rows.append(
            {
                "model": name,
                "description": title,
                "params": params,
                "macs": sum(r["macs"] for r in summary),
                "head_share": head_params(net) / params,
                "train_seconds": seconds,
                "examples_per_sec": images / seconds,
                "eval_seconds": time.perf_counter() - start,
                "train_loss": loss,
                "test_acc": acc,
                "status": status,
            }
        )
        print(f"{name}: test acc {acc:.4f}, loss {loss:.3f}, {seconds:.1f} s ({status})", flush=True)

    result = {"recipe": asdict(recipe), "device": str(rt.device), "rows": rows}
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "compare.md", markdown_table(result) + "\n")
    plot_compare(rows, out_dir / "compare.png", f"{recipe.budget} images at {recipe.resize}x{recipe.resize}")
    return rows


def fit(net: nn.Module, batches: Batches, recipe: Recipe, rt: Runtime) -> tuple[int, float, float, str]:
    """SGD on `recipe.budget` images (the seeded order, epoch after epoch); returns (images trained on,
    step seconds, mean loss over the last 10% of the images, status: ok, at chance level (loss ln 10),
    or diverged (the trainer's test: NaN/inf, or above 10 x ln 10))."""
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    net.train()
    seen, seconds, tail_loss, tail_seen = 0, 0.0, 0.0, 0
    tail_from = recipe.budget - max(recipe.budget // 10, 1)
    for epoch in count():
        for x, y in batches.epoch(epoch):
            x, y = x[: recipe.budget - seen], y[: recipe.budget - seen]
            t = time.perf_counter()
            with torch.autocast(rt.device.type, rt.dtype, enabled=rt.dtype is not None):
                loss = F.cross_entropy(net(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(rt.device)
            seconds += time.perf_counter() - t
            if not math.isfinite(value := loss.item()) or value > EXPLODED:  # as the trainer judges it
                print(f"  diverged: the loss reached {value} after {seen} images", file=sys.stderr)
                return seen + len(y), seconds, value, "diverged"
            if seen + len(y) > tail_from:
                tail_loss, tail_seen = tail_loss + value * len(y), tail_seen + len(y)
            seen += len(y)
            if seen >= recipe.budget:
                loss = tail_loss / tail_seen
                return seen, seconds, loss, "at chance level" if at_chance(loss) else "ok"
    raise AssertionError("unreachable")


def markdown_table(result: dict) -> str:
    r = result["recipe"]
    lines = [
        f"{r['budget']:,} training images per model at {r['resize']}x{r['resize']}, batch {r['batch_size']}, "
        f"SGD lr {r['lr']} momentum {r['momentum']}, seed {r['seed']}, on {result['device']}.",
        "",
        "| model | parameters | MACs/image | head share | train s | images/s | test acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        acc = f"{row['test_acc']:.4f}" + ("" if row["status"] == "ok" else f" ({row['status']})")
        lines.append(
            f"| {row['description']} | {row['params']:,} | {row['macs'] / 1e6:,.1f} M | {row['head_share']:.1%} | "
            f"{row['train_seconds']:.0f} | {row['examples_per_sec']:.0f} | {acc} |"
        )
    return "\n".join(lines)
