"""The training loop, with d2l `train_ch6` semantics, exact resume, torchrun/DDP, and failure guards.

d2l semantics kept exactly: Xavier-uniform init, plain SGD (momentum 0), mean cross-entropy, a fresh
shuffle every epoch, train loss/accuracy as running averages over the epoch in train mode (dropout
on), test accuracy in eval mode after each epoch, and examples/sec timed over the training steps
alone (from a fetched batch to the updated metrics), as d2l's `Timer` does.

A checkpoint holds everything the rest of the run depends on (weights, optimizer state, position in
the epoch, running sums, every RNG state; the data order follows from the seed), so a resumed run
continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nin.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from nin.config import Config
from nin.data import Batches, augment, load_fashion_mnist, split
from nin.errors import NinError
from nin.io import atomic_write_text
from nin.model import INITS, NiN, build, check_resize
from nin.plots import plot_curves
from nin.runtime import Runtime, setup, sync

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes
EXPLODED = 10 * CHANCE_LOSS  # a batch this far below chance is not learning but blowing up
RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", CHECKPOINT, "confusion_matrix.png", "cam.png", "report.html")


def at_chance(loss: float) -> bool:
    """A mean cross-entropy within 0.02 of ln(10): the network still guesses uniformly."""
    return abs(loss - CHANCE_LOSS) < 0.02


class Diverged(NinError):
    """The loss became NaN/inf or exploded; the message says where and what to try."""


class Stopped(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; `signum` says which signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum = 0

    def __enter__(self) -> StopOnSignal:
        self._active = threading.current_thread() is threading.main_thread()  # handlers need the main thread
        if self._active:
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        if self._active:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


def evaluate_accuracy(net: nn.Module, batches: Batches, rt: Runtime | None = None) -> float:
    """Share of correctly classified examples, in eval mode (dropout off), summed over all ranks."""
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    dtype = rt.dtype if rt else None
    with torch.inference_mode(), torch.autocast(batches.device.type, dtype, enabled=dtype is not None):
        for x, y in batches:
            correct += (net(x).argmax(dim=1) == y).sum()
    (total,) = rt.all_sum(correct.item()) if rt else [correct.item()]
    return total / len(batches.labels)


def init_model(config: Config) -> NiN:
    """The network with its initial weights, drawn from `config.seed` (the same on every rank)."""
    torch.manual_seed(config.seed)
    net = build(config.arch, config.dropout, config.width)
    check_resize(net, config.resize)
    return net.apply(INITS[config.init])


def train(config: Config, out_dir: Path, data_dir: Path | None = None, resume: bool = False) -> list[dict]:
    """Train NiN as `config` says (or continue the run in `out_dir`); returns the per-epoch metrics."""
    rt = setup(config.device, config.precision)
    if config.batch_size % rt.world_size:
        raise NinError(f"--batch-size {config.batch_size} (the global batch) does not divide among "
                       f"{rt.world_size} processes; use a multiple of {rt.world_size}")  # fmt: skip
    net = init_model(config).to(rt.device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    position = {"epoch": 0, "step": 0, "sums": [0.0, 0, 0, 0.0], "metrics": []}
    if resume:
        position = _restore(out_dir / CHECKPOINT, net, optimizer, rt)
    # DDP averages gradients over ranks; rank 0's initial weights are broadcast to all
    model = DistributedDataParallel(net) if rt.world_size > 1 else net

    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    if config.val_split:
        (train_x, train_y), (val_x, val_y) = split(train_x, train_y, config.val_split)
    if config.train_limit:
        train_x, train_y = train_x[: config.train_limit], train_y[: config.train_limit]
    if config.test_limit:
        test_x, test_y = test_x[: config.test_limit], test_y[: config.test_limit]
    shard = dict(device=rt.device, rank=rt.rank, world_size=rt.world_size)
    train_iter = Batches(train_x, train_y, config.batch_size, config.resize, shuffle=True, seed=config.seed, **shard)
    test_iter = Batches(test_x, test_y, config.batch_size, config.resize, **shard)
    val_iter = Batches(val_x, val_y, config.batch_size, config.resize, **shard) if config.val_split else None

    log = print if rt.is_main else lambda *a, **k: None
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    log(f"training on {rt.device}" + (f" x {rt.world_size} processes" if rt.world_size > 1 else ""))
    log(
        f"{len(train_y)} training / {f'{config.val_split} validation / ' if val_iter else ''}{len(test_y)} test "
        f"images at {config.resize}x{config.resize}, "
        f"{'bf16 autocast' if rt.dtype else 'fp32'}, run directory {out_dir}"
    )
    if position["epoch"] or position["step"]:
        log(f"resuming after epoch {position['epoch']}, step {position['step']}")

    history: list[dict] = position["metrics"]
    if position["epoch"] >= config.epochs:
        log(f"nothing to do: the run in {out_dir} has finished all {config.epochs} epochs")
        return history
    start = time.perf_counter()
    with StopOnSignal() as stop:
        for epoch in range(position["epoch"], config.epochs):
            epoch_start = time.perf_counter()
            first_step, sums = (position["step"], position["sums"]) if epoch == position["epoch"] else (0, None)
            loss_sum, correct, seen, seconds = _train_epoch(
                model, net, optimizer, train_iter, epoch, first_step, sums, config, out_dir, rt, stop, history
            )
            train_loss, train_acc = loss_sum / seen, correct / seen
            val = {"val_acc": evaluate_accuracy(net, val_iter, rt)} if val_iter else {}
            test_acc = evaluate_accuracy(net, test_iter, rt)
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    **val,
                    "test_acc": test_acc,
                    "examples_per_sec": seen / seconds,  # d2l's count: training steps only
                    "epoch_seconds": time.perf_counter() - epoch_start,  # wall time, data and evaluation included
                }
            )
            log(
                f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.3f}, train acc {train_acc:.3f}, "
                + (f"val acc {val['val_acc']:.3f}, " if val else "")
                + f"test acc {test_acc:.3f}, {seen / seconds:.1f} examples/sec, {history[-1]['epoch_seconds']:.1f} s"
            )
            if plateau := chance_plateau(train_loss, train_acc, test_acc):
                log(plateau, file=sys.stderr)
            _checkpoint(out_dir, net, optimizer, epoch + 1, 0, [0.0, 0, 0, 0.0], config, history, rt)
            if rt.is_main:  # after the checkpoint: metrics never run ahead of what a resume restores
                atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
                plot_curves(history, config.epochs, out_dir / "curves.png")
            # a signal in the epoch's last step or its evaluation: stop now that the epoch is saved
            if epoch + 1 < config.epochs and rt.all_sum(float(stop.signum > 0))[0]:
                raise _stopped(stop, f"after epoch {epoch + 1}", out_dir)

    last = history[-1]
    step_seconds = sum(len(train_y) / m["examples_per_sec"] for m in history)
    # d2l's closing lines: the last epoch's metrics, then examples/sec over all epochs' step time
    log(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
    log(f"{len(train_y) * config.epochs / step_seconds:.1f} examples/sec on {rt.device}")
    log(f"wall time {time.perf_counter() - start:.1f} s; run directory {out_dir}")
    return history


def _train_epoch(
    model: nn.Module,
    net: NiN,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    epoch: int,
    first_step: int,
    sums: list | None,
    config: Config,
    out_dir: Path,
    rt: Runtime,
    stop: StopOnSignal,
    history: list[dict],
) -> tuple[float, float, int, float]:
    """One pass over the training data from batch `first_step` on; returns (loss sum, correct, examples,
    this rank's seconds in steps); the first three summed over all ranks."""
    model.train()
    # running sums stay on the device (no sync per step); a resumed epoch starts from the saved ones
    carried = sums if sums and rt.is_main else [0.0, 0, 0, 0.0]
    loss_sum = torch.tensor(float(carried[0]), device=rt.device)
    correct = torch.tensor(int(carried[1]), device=rt.device)
    seen, seconds = int(carried[2]), float(carried[3])
    bar = tqdm(
        total=len(batches),
        initial=first_step,
        unit="batch",
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=None if rt.is_main else True,
        leave=False,
        file=sys.stderr,
    )
    with bar:
        for step, (x, y) in enumerate(batches.epoch(epoch, first_step), start=first_step):
            t = time.perf_counter()
            for group in optimizer.param_groups:  # a function of the step alone: nothing to checkpoint
                group["lr"] = learning_rate(config, epoch * len(batches) + step, config.epochs * len(batches))
            x = augment(x, config.augment)
            with torch.autocast(rt.device.type, rt.dtype, enabled=rt.dtype is not None):
                y_hat = model(x)
            # the mean over the global batch: each rank's sum, scaled so that DDP's average over ranks
            # is the mean over all examples (with one process, exactly d2l's mean cross-entropy)
            losses = F.cross_entropy(y_hat.float(), y, reduction="sum", label_smoothing=config.label_smoothing)
            loss = losses / (batches.global_batch_len(step) / rt.world_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += losses
                correct += (y_hat.argmax(dim=1) == y).sum()
            sync(rt.device)
            seconds += time.perf_counter() - t
            seen += len(y)
            # every rank must agree to stop at the same step: one tiny all-reduce of both flags
            blown = not torch.isfinite(loss) or loss > EXPLODED
            diverged, stopping = rt.all_sum(float(blown), float(stop.signum > 0))
            if diverged:
                _diverged(loss.item(), epoch, step, config, out_dir)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}",
                    acc=f"{correct.item() / seen:.3f}",
                    img_s=f"{seen / seconds:.0f}",
                )
            if step + 1 < len(batches):  # after the last step, the epoch's own checkpoint (and stop) follow
                at_interval = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0
                if stopping or at_interval:
                    # sums over ranks, but rank 0's own step time: it is a wall-clock time, not a count
                    totals = [*rt.all_sum(loss_sum.item(), correct.item(), seen), seconds]
                    _checkpoint(out_dir, net, optimizer, epoch, step + 1, totals, config, history, rt)
                if stopping:
                    raise _stopped(stop, f"at epoch {epoch + 1}, step {step + 1}", out_dir)
    loss_total, correct_total, seen_total = rt.all_sum(loss_sum.item(), correct.item(), seen)
    return loss_total, correct_total, int(seen_total), seconds


def _stopped(stop: StopOnSignal, where: str, out_dir: Path) -> Stopped:
    signum = stop.signum or signal.SIGTERM  # a rank that got no signal itself stops with the others
    name = signal.Signals(signum).name
    return Stopped(f"stopped by {name} {where}; checkpoint written. Continue with: nin train --resume {out_dir}",
                   signum)  # fmt: skip


def _checkpoint(
    out_dir: Path,
    net: NiN,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    sums: list,
    config: Config,
    history: list[dict],
    rt: Runtime,
) -> None:
    """Save the run's state; every rank's RNG state is gathered, rank 0 writes."""
    rng = rt.gather(torch.get_rng_state())
    cuda_rng = rt.gather(torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None)
    if rt.is_main:
        position = {"epoch": epoch, "step": step, "sums": sums, "world_size": rt.world_size}
        save_checkpoint(out_dir / CHECKPOINT, net, optimizer, position, config, history, rng, cuda_rng)


def _restore(path: Path, net: NiN, optimizer: torch.optim.Optimizer, rt: Runtime) -> dict:
    state = load_checkpoint(path)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    position = state["position"]
    if position["world_size"] == rt.world_size:
        torch.set_rng_state(state["rng"]["torch"][rt.rank])
        if rt.device.type == "cuda" and state["rng"]["cuda"][rt.rank] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"][rt.rank], rt.device)
    elif rt.is_main:
        print(
            f"warning: the checkpoint was written by {position['world_size']} process(es), this run has "
            f"{rt.world_size}: dropout masks will differ from an uninterrupted run",
            file=sys.stderr,
        )
    return {**position, "metrics": state["metrics"]}


def _diverged(loss: float, epoch: int, step: int, config: Config, out_dir: Path) -> None:
    kept = (
        f"the last good checkpoint is kept in {out_dir / CHECKPOINT}"
        if (out_dir / CHECKPOINT).exists()
        else "no checkpoint had been written yet"
    )
    what = f"became {loss}" if not math.isfinite(loss) else f"jumped to {loss:.1f} (chance level is {CHANCE_LOSS:.2f})"
    raise Diverged(
        f"training diverged: the loss {what} at epoch {epoch + 1}, step {step + 1}; {kept}. "
        f"Try a lower learning rate, e.g. --lr {config.lr / 2:g}"
        + (", or a longer --warmup." if config.schedule == "onecycle" else ".")
    )


def chance_plateau(train_loss: float, train_acc: float, test_acc: float) -> str | None:
    """What to say after an epoch whose mean training loss stayed at ln(10), chance level (None if it
    did not): stuck if the test accuracy is at chance too; starting to learn if the test accuracy is
    already above it (the seed's NiN can take epochs to leave the plateau; stopping it then is wrong)."""
    if not at_chance(train_loss) or train_acc >= 0.15:
        return None
    if test_acc >= 0.15:  # chance is 0.1; 0.15 is 16 standard deviations above it on the 10,000 test images
        return (
            f"note: the training loss is still near ln(10) = {CHANCE_LOSS:.3f}, chance level, but test accuracy "
            f"{test_acc:.3f} is above chance (0.1): the network has started to learn. d2l's NiN can take "
            "epochs to leave this plateau; let it run."
        )
    return (
        f"warning: the training loss stayed at ln(10) = {CHANCE_LOSS:.3f}, chance level, for the whole epoch, "
        "and test accuracy is at chance too (d2l's known NiN failure: its ReLUs died, or it has not started "
        "learning yet). If the next epoch is the same, stop and retry with another --seed, a lower --lr or "
        "--init kaiming (the fast preset, with BatchNorm, has not shown it)."
    )


def learning_rate(config: Config, step: int, steps: int) -> float:
    """The learning rate of global step `step` (from 0) of `steps`: constant, or onecycle (linear
    warmup over the first `warmup` share of the steps, never above lr, then linear decay towards 0,
    which the step after the last would reach)."""
    if config.schedule == "constant":
        return config.lr
    warm = config.warmup * steps
    if step < warm:
        return config.lr * min(1.0, (step + 1) / warm)
    return config.lr * (steps - step) / max(steps - warm, 1)
