"""What stops a run, and how it says why: signals, divergence, and the stuck-at-chance plateau."""

from __future__ import annotations

import math
import signal
import threading

import torch

from nin.errors import NinError

# a batch loss above 10x the chance level of 10 classes (ln 10, a uniform guess's cross-entropy) is not
# learning but blowing up; fixed, so that it is the same for any dataset (ln 100 is still 5 times below it)
EXPLODED = 10 * math.log(10)


class Diverged(NinError):
    """The loss became NaN/inf or exploded; the message says where and what to try."""


class Stopped(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; `signum` says which signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Pruned(Exception):
    """A per-epoch hook ended the run after an epoch that is saved (`nin tune` prunes a trial so)."""


class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop at its next check; a second SIGINT stops at once."""

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

    def stopped(self, where: str, run_dir: object) -> Stopped:
        signum = self.signum or signal.SIGTERM  # a rank that got no signal itself stops with the others
        return Stopped(f"stopped by {signal.Signals(signum).name} {where}; checkpoint written. "
                       f"Continue with: nin train --resume {run_dir}", signum)  # fmt: skip


def blown(loss: torch.Tensor) -> torch.Tensor:
    """True (as a tensor on the loss's device: no host sync) if the loss is NaN/inf or exploded."""
    return ~torch.isfinite(loss) | (loss > EXPLODED)


def at_chance(loss: float, classes: int = 10) -> bool:
    """A mean cross-entropy within 0.02 of ln(classes): the network still guesses uniformly."""
    return abs(loss - math.log(classes)) < 0.02


def diverged(loss: float, where: str, kept: str, lr: float, onecycle: bool, classes: int) -> Diverged:
    """The error of a run whose loss blew up `where` on data of `classes` classes."""
    chance = f"chance level is ln({classes}) = {math.log(classes):.2f}"
    what = f"became {loss}" if not math.isfinite(loss) else f"jumped to {loss:.1f} ({chance})"
    return Diverged(
        f"training diverged: the loss {what} {where}; {kept}. Try a lower learning rate, e.g. --lr {lr / 2:g}"
        + (", or a longer --warmup." if onecycle else ".")
    )


def chance_plateau(train_loss: float, train_acc: float, test_acc: float, classes: int = 10) -> str | None:
    """What to say after an epoch whose mean training loss stayed at ln(classes), chance level (None if it
    did not): stuck if the test accuracy is at chance too; starting to learn if the test accuracy is
    already above it (the seed's NiN can take epochs to leave the plateau; stopping it then is wrong)."""
    chance, above = 1 / classes, 1.5 / classes  # 10 classes: 0.15 is 16 standard deviations above 0.1 (10,000 images)
    if not at_chance(train_loss, classes) or train_acc >= above:
        return None
    if test_acc >= above:
        return (
            f"note: the training loss is still near ln({classes}) = {math.log(classes):.3f}, chance level, but "
            f"test accuracy {test_acc:.3f} is above chance ({chance:.3g}): the network has started to learn. "
            "d2l's NiN can take epochs to leave this plateau; let it run."
        )
    return (
        f"warning: the training loss stayed at ln({classes}) = {math.log(classes):.3f}, chance level, for the "
        "whole epoch, "
        "and test accuracy is at chance too (d2l's known NiN failure: its ReLUs died, or it has not started "
        "learning yet). If the next epoch is the same, stop and retry with another --seed, a lower --lr or "
        "--init kaiming (the fast preset, with BatchNorm, has not shown it)."
    )
