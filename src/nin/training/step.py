"""One training step (forward, loss, backward, update, metrics): the one that `nin train`, `nin compare`
and the benchmarks all run."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nin.data.batches import Batches
from nin.runtime import Runtime


@dataclass
class EpochState:
    """An epoch's running sums. The loss and correct counts stay on the model's device, so adding to
    them needs no host sync; `seen` and `seconds` are host numbers (this rank's)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0  # time in training steps, as d2l's Timer measures it

    @classmethod
    def start(cls, device: torch.device, saved: list | None = None) -> EpochState:
        """A new epoch's sums, or those a checkpoint saved mid-epoch ([loss, correct, seen, seconds])."""
        loss, correct, seen, seconds = saved or (0.0, 0, 0, 0.0)
        return cls(torch.tensor(float(loss), device=device), torch.tensor(int(correct), device=device),
                   int(seen), float(seconds))  # fmt: skip

    def totals(self, rt: Runtime) -> tuple[float, int, int]:
        """(loss sum, correct, examples) over all ranks: a host sync and, under torchrun, an all-reduce."""
        loss, correct, seen = rt.all_sum(self.loss_sum.item(), self.correct.item(), self.seen)
        return loss, int(correct), int(seen)

    def saved(self, rt: Runtime) -> list:
        """What a checkpoint keeps: the sums over all ranks, and rank 0's own step time (a wall-clock
        time, not a count)."""
        return [*self.totals(rt), self.seconds]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    rt: Runtime,
    state: EpochState,
    global_batch: int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Forward (in the runtime's autocast), mean cross-entropy, backward, update; add to `state`.

    The loss is each rank's sum divided by the global batch's examples per rank (`global_batch`, by
    default this batch), so DDP's average over ranks is the mean over the whole batch; with one
    process it is exactly d2l's mean cross-entropy. Returns the loss, detached, on the device.
    """
    with rt.autocast():
        y_hat = model(x)
    losses = F.cross_entropy(y_hat.float(), y, reduction="sum", label_smoothing=label_smoothing)
    loss = losses / ((global_batch or len(y)) / rt.world_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        state.loss_sum += losses
        state.correct += (y_hat.argmax(dim=1) == y).sum()
    state.seen += len(y)
    return loss.detach()


def median_images_per_sec(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                          rt: Runtime, steps: int, warmup: int) -> float:  # fmt: skip
    """Images/s of the median of `steps` timed `train_step`s on one batch, after `warmup` untimed ones
    (the benchmarks' measure: the median shrugs off a busy moment on a shared machine)."""
    state, times = EpochState.start(rt.device), []
    for i in range(warmup + steps):
        t = time.perf_counter()
        train_step(model, optimizer, x, y, rt, state)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return len(y) / statistics.median(times)


def evaluate_accuracy(net: torch.nn.Module, batches: Batches, rt: Runtime | None = None) -> float:
    """Share of correctly classified examples, in eval mode (dropout off), in the runtime's precision,
    summed over all ranks."""
    rt = rt or Runtime(batches.device)
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    with torch.inference_mode(), rt.autocast():
        for x, y in batches:
            correct += (net(x).argmax(dim=1) == y).sum()
    (total,) = rt.all_sum(correct.item())
    return total / len(batches.labels)
