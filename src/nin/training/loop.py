"""The training loop, with d2l `train_ch6` semantics, exact resume and torchrun/DDP.

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
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nin.config import FIELDS, Config, from_dict
from nin.data.batches import Batches, augment
from nin.data.stream import Files, batches_of
from nin.data.subsets import mean_std, splits
from nin.data.types import Dataset, Spec
from nin.errors import NinError
from nin.models.nin import INITS, NiN, check_resize
from nin.models.registry import build
from nin.models.syncbn import sync_batch_norm
from nin.plots import plot_curves
from nin.runtime import Runtime, env_world_size, setup, sync
from nin.training.checkpoint import load_checkpoint, save_checkpoint
from nin.training.guards import StopOnSignal, blown, chance_plateau, diverged
from nin.training.progress import LiveCurves, progress_bar
from nin.training.rundir import RunDir
from nin.training.step import EpochState, evaluate_accuracy, train_step


def init_model(config: Config, train_set: Dataset | Files | None = None) -> NiN:
    """The network for `train_set`'s channels and classes (None: Fashion-MNIST's) with its initial weights,
    drawn from `config.seed` (the same on every rank), and with `normalize`, the training set's mean and std."""
    torch.manual_seed(config.seed)
    shape = (train_set.channels, len(train_set.classes)) if train_set else (1, 10)
    net = build(config.arch, config.dropout, config.width, *shape, config.normalize)
    check_resize(net, config.resize)
    net.apply(INITS[config.init])
    if config.normalize and train_set:
        images = train_set.images if isinstance(train_set, Dataset) else train_set.sample()  # streamed: a sample
        net[0].mean[0, :, 0, 0], net[0].std[0, :, 0, 0] = mean_std(images)
    return net


@dataclass
class _Loop:
    """What every step of a run needs."""

    config: Config
    run: RunDir
    rt: Runtime
    spec: Spec
    net: NiN
    model: nn.Module  # `net`, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    batches: Batches
    history: list[dict]
    stop: StopOnSignal


def train(config: Config, out_dir: Path, data_dir: Path | None = None, resume: bool = False,
          force: bool = False, auto_resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """Train NiN as `config` says into the run directory `out_dir` (a new one, or with `force` a
    replaced one), or continue the run there (`resume`; with `auto_resume`, if it holds a run with these
    settings, else start one); returns the per-epoch metrics. A finished run is not trained further: its
    metrics.jsonl and curves.png are completed from its checkpoint if a crash left them behind.
    `on_epoch` gets each epoch's metrics once they are saved; raising `Pruned` ends the run there."""
    run = RunDir(out_dir)
    if auto_resume:  # every rank reads the folder before the ranks meet: rank 0 has written nothing yet
        resume = continues(config, run)
    elif not resume:
        RunDir.for_new_run(out_dir, force)
    if config.batch_size % (n := env_world_size()):  # before the ranks meet: each says so and ends
        raise NinError(f"--batch-size {config.batch_size} (the global batch) does not divide among "
                       f"{n} processes; use a multiple of {n}")  # fmt: skip
    rt = setup(config.device, config.precision)
    train_set, val_set, test_set = splits(config, data_dir)
    spec = Spec.of(config.dataset, train_set, data_dir)
    net = init_model(config, train_set)
    if config.sync_bn:  # in one process the same arithmetic, so that 1 and N processes compare
        net = sync_batch_norm(net)
    net = net.to(rt.device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    start_of_run = {"epoch": 0, "step": 0, "sums": None, "metrics": []}
    position = _restore(run, net, optimizer, rt, spec) if resume else start_of_run
    # DDP averages gradients over ranks; rank 0's initial weights are broadcast to all
    model = DistributedDataParallel(net) if rt.world_size > 1 else net
    train_iter, val_iter, test_iter = _batches(config, (train_set, val_set, test_set), rt)

    log = print if rt.is_main else lambda *a, **k: None
    history: list[dict] = position["metrics"]
    finished = position["epoch"] >= config.epochs  # e.g. a torchrun restart that came after the last checkpoint
    if finished:
        log(f"the run in {run.path} has finished all {config.epochs} epochs: nothing left to train")
    else:
        log(f"training on {rt.device}" + (f" x {rt.world_size} processes" if rt.world_size > 1 else ""))
        log(f"{len(train_iter.labels)} training / " + (f"{len(val_iter.labels)} validation / " if val_iter else "")
            + f"{len(test_iter.labels)} test images of {config.dataset} at {config.resize}x{config.resize}, "
            f"{'bf16 autocast' if rt.dtype else 'fp32'}, "
            f"run directory {run.path}")  # fmt: skip
        if position["epoch"] or position["step"]:
            log(f"resuming after epoch {position['epoch']}, step {position['step']}")
    if rt.is_main:  # the settings and data are good: only now may an old run be replaced
        if not resume:
            run.clear(keep_record=auto_resume)  # a restart before the first checkpoint is the same run
        run.write_json("config", config.to_dict())
    start = time.perf_counter()
    session = run.session(rt.precision, rt.world_size, str(rt.device), history) if rt.is_main else nullcontext()
    live = LiveCurves()  # in a Jupyter notebook, the curves redrawn in the cell; elsewhere nothing
    with rt.peers_answer(), session, StopOnSignal() as stop:
        loop = _Loop(config, run, rt, spec, net, model, optimizer, train_iter, history, stop)
        for epoch in range(position["epoch"], config.epochs):
            epoch_start = time.perf_counter()
            resumed = epoch == position["epoch"]
            # a resumed epoch starts from the saved sums (rank 0 holds them: they are totals over ranks)
            state = EpochState.start(rt.device, position["sums"] if resumed and rt.is_main else None)
            _train_epoch(loop, epoch, position["step"] if resumed else 0, state)
            loss_sum, correct, seen = state.totals(rt)
            val = {"val_acc": evaluate_accuracy(net, val_iter, rt)} if val_iter else {}
            test_acc = evaluate_accuracy(net, test_iter, rt)
            m = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                **val,
                "test_acc": test_acc,
                "examples_per_sec": seen / state.seconds,  # d2l's count: training steps only
                "epoch_seconds": time.perf_counter() - epoch_start,  # wall time, data and evaluation included
            }
            history.append(m)
            log(f"epoch {epoch + 1}/{config.epochs}: loss {m['train_loss']:.3f}, train acc {m['train_acc']:.3f}, "
                + (f"val acc {m['val_acc']:.3f}, " if val else "")
                + f"test acc {test_acc:.3f}, {m['examples_per_sec']:.1f} examples/sec, "
                f"{m['epoch_seconds']:.1f} s")  # fmt: skip
            if plateau := chance_plateau(m["train_loss"], m["train_acc"], test_acc, len(spec.classes)):
                log(plateau, file=sys.stderr)
            _checkpoint(loop, epoch + 1, 0, [0.0, 0, 0, 0.0])
            if rt.is_main:  # after the checkpoint: metrics never run ahead of what a resume restores
                run.write_text("metrics", _metrics_text(history))
                plot_curves(history, config.epochs, run.file("curves"))
                live.show(run.file("curves"))
            if on_epoch is not None:
                on_epoch(m)
            # a signal in the epoch's last step or its evaluation: stop now that the epoch is saved
            if epoch + 1 < config.epochs and rt.all_sum(float(stop.signum > 0))[0]:
                raise stop.stopped(f"after epoch {epoch + 1}", run.path)
        if finished and rt.is_main and (written := _complete(run, history, config.epochs)):
            log(f"wrote {' and '.join(written)} from the checkpoint (the run stopped before writing them)")

    last = history[-1]
    step_seconds = sum(len(train_iter.labels) / m["examples_per_sec"] for m in history)
    # d2l's closing lines: the last epoch's metrics, then examples/sec over all epochs' step time
    log(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
    log(f"{len(train_iter.labels) * config.epochs / step_seconds:.1f} examples/sec on {rt.device}")
    log(f"wall time {time.perf_counter() - start:.1f} s; run directory {run.path}")
    return history


def _train_epoch(loop: _Loop, epoch: int, first_step: int, state: EpochState) -> None:
    """One pass over the training data from batch `first_step` on, adding to `state`."""
    config, rt, steps = loop.config, loop.rt, len(loop.batches)
    loop.model.train()
    bar = progress_bar(total=steps, initial=first_step, unit="batch", desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=None if rt.is_main else True, leave=False, file=sys.stderr)  # fmt: skip
    bad = torch.zeros((), dtype=torch.bool, device=rt.device)  # any blown loss since the last check
    t = None
    with bar:
        for step, (x, y) in enumerate(loop.batches.epoch(epoch, first_step), start=first_step):
            t = time.perf_counter() if t is None else t  # d2l's Timer: from the fetched batch to the updated metrics
            for group in loop.optimizer.param_groups:  # a function of the step alone: nothing to checkpoint
                group["lr"] = learning_rate(config, epoch * steps + step, config.epochs * steps)
            x = augment(x, config.augment)
            loss = train_step(loop.model, loop.optimizer, x, y, rt, state, loop.batches.global_batch_len(step),
                              config.label_smoothing)  # fmt: skip
            bad |= blown(loss)
            bar.update(1)
            last = step + 1 == steps
            at_interval = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0
            if not (last or at_interval or (step + 1) % rt.check_every == 0):
                continue
            sync(rt.device)
            state.seconds, t = state.seconds + time.perf_counter() - t, None
            # every rank must agree to stop at the same step: one tiny all-reduce of both flags
            any_bad, stopping = rt.all_sum(float(bad), float(loop.stop.signum > 0))
            if any_bad:
                checkpoint = loop.run.file("checkpoint")
                kept = (f"the last good checkpoint is kept in {checkpoint}" if checkpoint.exists()
                        else "no checkpoint had been written yet")  # fmt: skip
                raise diverged(loss.item(), f"at epoch {epoch + 1}, step {step + 1}", kept, config.lr,
                               config.schedule == "onecycle", len(loop.spec.classes))  # fmt: skip
            bar.set_postfix(loss=f"{state.loss_sum.item() / state.seen:.3f}",
                            acc=f"{state.correct.item() / state.seen:.3f}",
                            img_s=f"{state.seen / state.seconds:.0f}", refresh=False)  # fmt: skip
            if not last and (stopping or at_interval):  # after the last step, the epoch's own checkpoint follows
                _checkpoint(loop, epoch, step + 1, state.saved(rt))
                if stopping:
                    raise loop.stop.stopped(f"at epoch {epoch + 1}, step {step + 1}", loop.run.path)


def _metrics_text(history: list[dict]) -> str:
    """metrics.jsonl: one line of metrics per epoch."""
    return "".join(json.dumps(m) + "\n" for m in history)


def _complete(run: RunDir, history: list[dict], epochs: int) -> list[str]:
    """Write metrics.jsonl and curves.png of a finished run where a crash between its last checkpoint and
    them left them missing or behind the checkpoint's metrics; returns the names of the files written."""
    written = []
    if not run.file("metrics").is_file() or run.file("metrics").read_text() != _metrics_text(history):
        written.append(run.write_text("metrics", _metrics_text(history)).name)
    if written or not run.file("curves").is_file():  # the curves are drawn after the metrics are written
        plot_curves(history, epochs, run.file("curves"))
        written.append(run.file("curves").name)
    return written


def continues(config: Config, run: RunDir) -> bool:
    """For --auto-resume: True if `run` holds a checkpoint of a run with `config`'s settings (continue it;
    a finished one is only completed), False if it holds no run, or only the start of this one before its
    first checkpoint (start it). A run with other settings is an error that names the settings that differ."""
    checkpoint = run.file("checkpoint")
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        theirs, source = state["config"], checkpoint
    elif run.holds_run() and run.file("config").is_file():
        state, theirs, source = None, run.read_json("config"), run.file("config")
    else:
        RunDir.for_new_run(run.path)  # missing or empty, else the usual error
        return False
    theirs = from_dict(theirs, source=str(source))
    differ = [f"{k} {getattr(theirs, k)!r} there, {getattr(config, k)!r} here" for k in FIELDS
              if k != "device" and getattr(theirs, k) != getattr(config, k)]  # fmt: skip
    if differ:
        raise NinError(f"--auto-resume: {run.path} holds a run with other settings ({'; '.join(differ)}); "
                       "use another --out, or --force to replace that run")  # fmt: skip
    return state is not None


def _batches(config: Config, data: tuple[Dataset | Files, Dataset | Files | None, Dataset | Files],
             rt: Runtime) -> tuple[Batches, Batches | None, Batches]:  # fmt: skip
    """(training, validation or None, test) batches of this rank, from the `splits` of the data (in memory or
    streamed: one interface)."""
    train, val, test = data
    shard = dict(device=rt.device, rank=rt.rank, world_size=rt.world_size, workers=config.workers,
                 skip_bad=config.skip_bad_images)  # fmt: skip
    train_iter = batches_of(train, config.batch_size, config.resize, train=True, seed=config.seed, **shard)
    val_iter = batches_of(val, config.batch_size, config.resize, **shard) if val else None
    return train_iter, val_iter, batches_of(test, config.batch_size, config.resize, **shard)


def _checkpoint(loop: _Loop, epoch: int, step: int, sums: list) -> None:
    """Save the run's state; every rank's RNG state is gathered, rank 0 writes."""
    rt = loop.rt
    rng = rt.gather(torch.get_rng_state())
    cuda_rng = rt.gather(torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None)
    if rt.is_main:
        position = {"epoch": epoch, "step": step, "sums": sums, "world_size": rt.world_size}
        save_checkpoint(loop.run.file("checkpoint"), loop.net, loop.optimizer, position, loop.config, loop.spec,
                        loop.history, rng, cuda_rng)  # fmt: skip


def _restore(run: RunDir, net: NiN, optimizer: torch.optim.Optimizer, rt: Runtime, spec: Spec) -> dict:
    """Load the run's checkpoint into `net` and `optimizer` and this rank's RNG; returns its position.
    The data (`spec`) must be what the run trained on: the same classes, in the same order, and channels."""
    path = run.file("checkpoint")
    state = load_checkpoint(path)
    theirs = Spec.from_dict(state.get("data"), path)
    if (theirs.classes, theirs.channels) != (spec.classes, spec.channels):
        raise NinError(f"{path}: trained on {theirs.channels}-channel data of {len(theirs.classes)} classes "
                       f"({', '.join(theirs.classes[:10])}...), and the data now has {spec.channels} channel(s) and "
                       f"{len(spec.classes)} classes; continue it on its own data (--data-dir)")  # fmt: skip
    position = state["position"]
    if position["world_size"] != rt.world_size:  # each rank's dropout masks and RNG are its own
        launch = (f"torchrun --nproc_per_node={position['world_size']} -m nin train" if position["world_size"] > 1
                  else "nin train")  # fmt: skip
        raise NinError(f"{path}: written by {position['world_size']} process(es), and this run has "
                       f"{rt.world_size}; an exact resume needs the same number: "
                       f"{launch} --resume {run.path}")  # fmt: skip
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"][rt.rank])
    if rt.device.type == "cuda" and state["rng"]["cuda"][rt.rank] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"][rt.rank], rt.device)
    return {**position, "metrics": state["metrics"]}


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
