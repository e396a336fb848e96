"""`nin compare`: NiN against the classic CNNs it replaces, and d2l's NiN exercises, on one budget.

Every model sees the same training images in the same seeded order, resized to the same size, the
same number of them (the budget), with the same optimizer, learning rate and batch size: one
recipe, so differences come from the architectures. Each row records parameters, MACs per image,
the share of parameters in the classifier head, training wall time and test accuracy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from itertools import count
from pathlib import Path

import torch
from torch import nn

from nin.config import Config, Recipe
from nin.data.batches import Batches
from nin.data.subsets import splits
from nin.errors import NinError
from nin.models.nin import init_kaiming, init_weights, layer_summary
from nin.models.registry import MODELS, smallest_input
from nin.plots import plot_compare
from nin.runtime import Runtime, env_world_size, local, sync
from nin.training.guards import at_chance, blown
from nin.training.provenance import provenance
from nin.training.rundir import RunDir
from nin.training.step import EpochState, evaluate_accuracy, train_step


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
        if recipe.resize < (smallest := smallest_input(name)):
            raise NinError(f"--resize {recipe.resize} is too small for {name}; it needs at least {smallest}")
    if env_world_size() > 1:
        raise NinError("nin compare runs in one process; start it with python -m nin or nin, not torchrun")
    rt = local(recipe.device, recipe.precision)
    train_iter, test_iter, shape = batches(recipe, data_dir, rt)
    run = RunDir(out_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    print(f"{len(names)} models, {recipe.budget} training images of {recipe.dataset} each at "
          f"{recipe.resize}x{recipe.resize} on {rt.device}, {rt.precision}")  # fmt: skip
    rows = [train_model(name, recipe, train_iter, test_iter, rt, *shape)[1] for name in names]
    result = {"recipe": asdict(recipe), "device": str(rt.device), "precision": rt.precision,
              "machine": provenance(str(rt.device)), "rows": rows}  # fmt: skip
    run.write_json("compare_json", result)
    run.write_text("compare_md", markdown_table(result) + "\n")
    plot_compare(rows, run.file("compare_png"), f"{recipe.budget} images at {recipe.resize}x{recipe.resize}")
    return rows


def batches(recipe: Recipe, data_dir: Path | None, rt: Runtime) -> tuple[Batches, Batches, tuple[int, int]]:
    """(training, test) batches, and the data's (channels, classes): every model sees the training images
    in the same seeded order."""
    config = Config(dataset=recipe.dataset, image_size=recipe.image_size, test_limit=recipe.test_limit)
    train, _, test = splits(config, data_dir)
    train_iter = Batches(train.images, train.labels, recipe.batch_size, recipe.resize, rt.device, shuffle=True,
                         seed=recipe.seed)  # fmt: skip
    test_iter = Batches(test.images, test.labels, 500, recipe.resize, rt.device)
    return train_iter, test_iter, (train.images.shape[1], len(train.classes))


def train_model(name: str, recipe: Recipe, train_iter: Batches, test_iter: Batches, rt: Runtime,
                channels: int = 1, classes: int = 10) -> tuple[nn.Module, dict]:  # fmt: skip
    """Build (for `channels` and `classes`), initialise (from the recipe's seed), train and test one model;
    returns it and its row."""
    title, build = MODELS[name]
    torch.manual_seed(recipe.seed)
    net = build(recipe.resize, channels, classes)
    net.apply(init_weights if name == "lenet" else init_kaiming)
    summary = layer_summary(net, recipe.resize, channels)
    params = sum(p.numel() for p in net.parameters())
    net = net.to(rt.device, memory_format=torch.channels_last)
    images, seconds, loss, status = fit(net, train_iter, recipe, rt, classes)
    start = time.perf_counter()
    acc = evaluate_accuracy(net, test_iter, rt)
    print(f"{name}: test acc {acc:.4f}, loss {loss:.3f}, {seconds:.1f} s ({status})", flush=True)
    return net, {
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


def fit(net: nn.Module, batches: Batches, recipe: Recipe, rt: Runtime,
        classes: int = 10) -> tuple[int, float, float, str]:  # fmt: skip
    """`nin train`'s step on `recipe.budget` images (the seeded order, epoch after epoch); returns
    (images trained on, step seconds, mean loss over the last 10% of the images, status: ok, at chance
    level (loss ln(classes)), or diverged (the trainer's test: NaN/inf, or above 10 x ln 10))."""
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    net.train()
    state = EpochState.start(rt.device)
    tail_from = recipe.budget - max(recipe.budget // 10, 1)
    tail_start = None  # (loss sum, images) when the last 10% began
    bad, t, steps = torch.zeros((), dtype=torch.bool, device=rt.device), None, 0
    for epoch in count():
        for x, y in batches.epoch(epoch):
            x, y = x[: recipe.budget - state.seen], y[: recipe.budget - state.seen]
            if tail_start is None and state.seen + len(y) > tail_from:
                tail_start = (state.loss_sum.clone(), state.seen)
            t = time.perf_counter() if t is None else t
            loss = train_step(net, optimizer, x, y, rt, state)
            bad |= blown(loss)
            steps += 1
            done = state.seen >= recipe.budget
            if not (done or steps % rt.check_every == 0):
                continue
            sync(rt.device)
            state.seconds, t = state.seconds + time.perf_counter() - t, None
            if bad:
                print(f"  diverged: the loss reached {loss.item()} after {state.seen} images", file=sys.stderr)
                return state.seen, state.seconds, loss.item(), "diverged"
            if done:
                tail = (state.loss_sum - tail_start[0]).item() / (state.seen - tail_start[1])
                return state.seen, state.seconds, tail, "at chance level" if at_chance(tail, classes) else "ok"
    raise AssertionError("unreachable")


def markdown_table(result: dict) -> str:
    r = result["recipe"]
    lines = [
        f"{r['budget']:,} training images of {r.get('dataset', 'fashion-mnist')} per model at "
        f"{r['resize']}x{r['resize']}, batch {r['batch_size']}, "
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
