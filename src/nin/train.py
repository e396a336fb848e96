"""The training loop, with d2l `train_ch6` semantics, a run directory, and guards against failure.

d2l semantics kept exactly: Xavier-uniform init, plain SGD (momentum 0), mean cross-entropy, a fresh
shuffle every epoch, train loss/accuracy as running averages over the epoch in train mode (dropout
on), test accuracy in eval mode after each epoch, and examples/sec timed over the training steps
alone (from a fetched batch to the updated metrics), as d2l's `Timer` does.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nin.checkpoint import CHECKPOINT, save_checkpoint
from nin.config import Config
from nin.data import Batches, load_fashion_mnist
from nin.errors import NinError
from nin.io import atomic_write_text
from nin.model import INITS, NiN, check_resize
from nin.plots import plot_curves

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes
RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", CHECKPOINT, "confusion_matrix.png")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NinError("--device cuda: no CUDA device is available to this PyTorch; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise NinError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that timers measure it (d2l's float() on the loss does the same)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def evaluate_accuracy(net: nn.Module, batches: Batches) -> float:
    """Share of correctly classified examples, in eval mode (dropout off)."""
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    with torch.inference_mode():
        for x, y in batches:
            correct += (net(x).argmax(dim=1) == y).sum()
    return correct.item() / len(batches.labels)


def train(config: Config, out_dir: Path, data_dir: Path | None = None) -> list[dict]:
    """Train NiN as `config` says, writing the run directory `out_dir`; returns the per-epoch metrics."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    net = NiN(dropout=config.dropout)
    check_resize(net, config.resize)
    net.apply(INITS[config.init])
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)

    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    if config.train_limit:
        train_x, train_y = train_x[: config.train_limit], train_y[: config.train_limit]
    if config.test_limit:
        test_x, test_y = test_x[: config.test_limit], test_y[: config.test_limit]
    train_iter = Batches(train_x, train_y, config.batch_size, config.resize, device, shuffle=True, seed=config.seed)
    test_iter = Batches(test_x, test_y, config.batch_size, config.resize, device)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    print(f"training on {device}")
    print(
        f"{len(train_y)} training / {len(test_y)} test images at {config.resize}x{config.resize}, "
        f"run directory {out_dir}"
    )

    history: list[dict] = []
    step_seconds = 0.0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        train_iter.epoch = epoch
        loss_sum, correct, seen, seconds = _train_epoch(net, optimizer, train_iter, epoch, config, out_dir)
        train_loss, train_acc = loss_sum / seen, correct / seen
        test_acc = evaluate_accuracy(net, test_iter)
        step_seconds += seconds
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_acc": test_acc,
                "examples_per_sec": seen / seconds,  # d2l's count: training steps only
                "epoch_seconds": time.perf_counter() - epoch_start,  # wall time, data and evaluation included
            }
        )
        print(
            f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.3f}, train acc {train_acc:.3f}, "
            f"test acc {test_acc:.3f}, {seen / seconds:.1f} examples/sec, {history[-1]['epoch_seconds']:.1f} s"
        )
        if abs(train_loss - CHANCE_LOSS) < 0.02 and train_acc < 0.15:
            print(
                f"warning: the training loss stayed at ln(10) = {CHANCE_LOSS:.3f}, chance level, for the whole "
                "epoch (d2l's known NiN failure: its ReLUs died, or it has not started learning yet). If the "
                "next epoch is the same, stop and retry with another --seed or a lower --lr.",
                file=sys.stderr,
            )
        atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
        plot_curves(history, config.epochs, out_dir / "curves.png")
        save_checkpoint(out_dir / CHECKPOINT, net, optimizer, epoch + 1, config, history)

    last = history[-1]
    # d2l's closing lines: the last epoch's metrics, then examples/sec over all epochs' step time
    print(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
    print(f"{len(train_y) * config.epochs / step_seconds:.1f} examples/sec on {device}")
    print(f"wall time {time.perf_counter() - start:.1f} s; run directory {out_dir}")
    return history


def _train_epoch(
    net: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, epoch: int, config: Config, out_dir: Path
) -> tuple[float, float, int, float]:
    """One pass over the training data; returns (loss sum, correct, examples, seconds in steps)."""
    net.train()
    loss_sum = torch.zeros((), device=batches.device)
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    seen, seconds = 0, 0.0
    bar = tqdm(
        total=len(batches.labels),
        unit="img",
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=None,
        leave=False,
        file=sys.stderr,
    )
    with bar:
        for step, (x, y) in enumerate(batches):
            t = time.perf_counter()
            y_hat = net(x)
            loss = F.cross_entropy(y_hat, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss * len(y)
                correct += (y_hat.argmax(dim=1) == y).sum()
            _sync(batches.device)
            seconds += time.perf_counter() - t
            seen += len(y)
            if not torch.isfinite(loss):
                _diverged(loss.item(), epoch, step, config, out_dir)
            bar.update(len(y))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    return loss_sum.item(), correct.item(), seen, seconds


def _diverged(loss: float, epoch: int, step: int, config: Config, out_dir: Path) -> None:
    kept = (
        f"the checkpoint of epoch {epoch} is kept in {out_dir / CHECKPOINT}"
        if epoch
        else "no checkpoint was written (it diverged in the first epoch)"
    )
    raise NinError(
        f"training diverged: the loss became {loss} at epoch {epoch + 1}, step {step + 1}; {kept}. "
        f"Try a lower learning rate, e.g. --lr {config.lr / 2:g}."
    )
