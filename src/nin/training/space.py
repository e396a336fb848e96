"""`nin tune`'s search space: which settings a trial draws, and from what; a default per preset, or a TOML file.

A space file has one table per setting (a field of `Config`, as `nin train`'s flags name them with `_`):

    [lr]                       # a number between low and high; log = true draws it on a log scale
    low = 0.02
    high = 0.5
    log = true

    [batch_size]               # one of a list
    choices = [32, 64, 128]

Integers for low and high draw an integer (epochs, width). Every bound and choice is checked as a config
file's value is, so a bad space is one error before any trial runs.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from nin.config import FIELDS, Config, from_dict
from nin.errors import NinError

# settings a trial may not draw: the data, the held-out images the trials are scored on, where it runs
FIXED = {"dataset": "the data", "val_split": "the validation images every trial is scored on",
         "device": "where the trials run"}  # fmt: skip


@dataclass(frozen=True)
class Param:
    """One searched setting: `choices`, or a number from `low` to `high` (an int if both are ints), `log` scale."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: object, name: str) -> object:
        """The value an Optuna trial draws for the setting `name`."""
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(name, self.low, self.high, log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def to_dict(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


Space = dict[str, Param]


def default_space(base: Config, fixed: set[str] = frozenset()) -> Space:
    """A sensible space around `base` (a preset): learning rate, weight decay, warm-up, label smoothing, width,
    batch size, augmentation and epochs up to the preset's; settings in `fixed` (given as flags) stay fixed."""
    space = {
        "lr": Param(round(base.lr / 4, 6), round(base.lr * 4, 6), log=True),
        "weight_decay": Param(1e-5, 1e-2, log=True),
        "label_smoothing": Param(0.0, 0.2),
        "batch_size": Param(
            choices=tuple(sorted({max(base.batch_size // 2, 1), base.batch_size, base.batch_size * 2}))
        ),
        # digits must not be mirrored: a preset that shifts only (mnist) keeps to shifts
        "augment": Param(
            choices=("none", "crop") if base.augment == "crop" else ("none", "flip", "flip-crop", "flip-crop-erase")
        ),  # fmt: skip
    }
    if base.schedule == "onecycle":
        space["warmup"] = Param(0.0, 0.4)
    if base.arch == "nin-bn":  # width sizes nin-bn alone
        space["width"] = Param(choices=tuple(sorted({max(base.width // 2, 1), base.width, base.width * 2})))
    if base.epochs > 1:
        space["epochs"] = Param(max(base.epochs // 2, 1), base.epochs)
    return {name: p for name, p in space.items() if name not in fixed}


def read_space(path: Path, base: Config, fixed: set[str] = frozenset()) -> Space:
    """The space in the TOML file `path`, each bound and choice checked against `base`'s settings."""
    where = f"--space {path}"
    try:
        tables = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise NinError(f"{where}: cannot read it ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise NinError(f"{where}: not valid TOML ({e})") from None
    if not tables:
        raise NinError(f"{where}: no setting to search; add a table such as [lr] with low = 0.01 and high = 0.5")
    return {name: _param(where, name, table, base, fixed) for name, table in tables.items()}


def _param(where: str, name: str, table: object, base: Config, fixed: set[str]) -> Param:
    at = f"{where}: [{name}]"
    if name not in FIELDS:
        raise NinError(f"{at}: not a setting of nin train; valid: {', '.join(FIELDS)}")
    if name in FIXED:
        raise NinError(f"{at}: {FIXED[name]} stay the same for every trial; give it as a flag instead")
    if name in fixed:
        raise NinError(f"{at}: --{name.replace('_', '-')} is also given as a flag (fixed for every trial); drop one")
    if not isinstance(table, dict) or not table:
        raise NinError(f"{at}: expected a table: choices = [...], or low = ... and high = ... (log = true optional)")
    unknown = sorted(set(table) - {"low", "high", "log", "choices"})
    if unknown:
        raise NinError(f"{at}: unknown key(s) {', '.join(unknown)}; use choices = [...], or low, high and log")
    if "choices" in table:
        if set(table) != {"choices"} or not isinstance(table["choices"], list) or not table["choices"]:
            raise NinError(f"{at}: choices = [...] is a non-empty list, alone in its table")
        param = Param(choices=tuple(table["choices"]))
        values = param.choices
    else:
        if "low" not in table or "high" not in table:
            raise NinError(f"{at}: give both low and high (or choices = [...])")
        low, high, log = table["low"], table["high"], table.get("log", False)
        if not isinstance(log, bool):
            raise NinError(f"{at}: log is true or false, got {log!r}")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high:
            raise NinError(f"{at}: low and high are numbers with low < high, got {low!r} and {high!r}")
        if log and low <= 0:
            raise NinError(f"{at}: a log scale needs low > 0, got {low!r}")
        param, values = Param(low, high, log), (low, high)
    for value in values:  # each as a config file's value: its type and range
        from_dict({**base.to_dict(), name: value}, source=at)
    return param


def to_toml(values: dict) -> str:
    """Settings (or a space's tables, as dicts) as TOML: strings, numbers, booleans and lists of them."""
    plain = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if not isinstance(v, dict) and v is not None)
    tables = "".join(f"\n[{k}]\n" + to_toml(v) for k, v in values.items() if isinstance(v, dict))
    return plain + tables
