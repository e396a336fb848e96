"""`nin tune`: an Optuna study of short `nin train` runs, scored on a validation split of the training data.

Each trial is an ordinary run directory, DIR/trials/NNNN/ (its output in DIR/trials/NNNN.log), trained by
the training loop itself; its score is the last epoch's accuracy on `val_split` held-out training images,
never the test set. After each epoch the pruner compares the trial's validation curve with the others'
and may end it there (the run is saved as it stands; run.json says "pruned").

The study lives in its storage (SQLite in DIR by default; any SQLAlchemy URL), so:
- `trials` is the study's total: run again, the same command finishes the remainder; finished trials
  (complete or pruned) are never repeated;
- a trial that was stopped (Ctrl-C, SIGTERM) or killed (its process gone; on this machine seen at once,
  elsewhere by its missing heartbeat) is marked failed, does not count, and a new trial takes its place;
  its run directory stays as it was;
- several processes on one study (`jobs` here, or other commands on the same storage) share the trials and
  stop together at `trials`: a trial asked for once the study has its total is marked failed at once and
  noted "surplus".
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shlex
import socket
import sys
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nin.config import Config, from_dict
from nin.data.folder import decoded_bytes
from nin.data.stream import usable_cores
from nin.errors import NinError
from nin.io import atomic_write_text
from nin.plots import plot_tune
from nin.training.guards import Diverged, Pruned
from nin.training.loop import train
from nin.training.space import Space, default_space, read_space, to_toml

EXTRA = "pip install 'nin[tune]' (optuna)"
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT = 60  # seconds between a running trial's signs of life in the storage; 5 missed: failed


class Surplus(Exception):
    """The study already had its trials when this one was asked for (another process took the last one)."""


@dataclass(frozen=True)
class Study:
    """What every process of one `nin tune` needs: the study's place and name, its settings and its budget."""

    out: Path
    storage: str
    name: str
    base: Config
    space: Space
    trials: int
    pruner: str = "median"
    seed: int = 0
    timeout: float | None = None
    data_dir: Path | None = None


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise NinError(f"nin tune needs Optuna: {EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets nin's own line
    return optuna


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


CREATION_RACE = ("already exists", "UNIQUE constraint failed: alembic_version")


def load(study: Study, worker: int = 0) -> Any:
    """The Optuna study (created on first use); a study with other settings or space is an error."""
    optuna = optuna_module()
    sqlite = study.storage.startswith("sqlite")
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna's words, and has been for years
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    study.storage, heartbeat_interval=HEARTBEAT, grace_period=5 * HEARTBEAT,
                    engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {},  # processes take turns writing
                )  # fmt: skip
            break
        except Exception as e:  # SQLAlchemy's errors for a bad URL or an unreachable database have no common base
            # two processes created a new database at once: the loser finds the tables, or the schema's version row,
            # already written; opening it again finds the database whole
            if any(sign in str(e) for sign in CREATION_RACE) and attempt < 2:
                time.sleep(0.5)
                continue
            raise NinError(f"--storage {study.storage}: cannot open it ({str(e).splitlines()[0][:200]})") from None
    epochs = study.space.get("epochs")  # Hyperband's resource: epochs, up to the most a trial may draw
    most = max([study.base.epochs, *(epochs.choices or (epochs.high,))]) if epochs else study.base.epochs
    pruner = {"median": optuna.pruners.MedianPruner(), "none": optuna.pruners.NopPruner(),
              "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=most)}  # fmt: skip
    s = optuna.create_study(storage=storage, study_name=study.name, direction="maximize", load_if_exists=True)
    # a different draw per process and per restart: a restarted study must not redraw its first trials
    seed = random.Random(f"{study.seed}/{worker}/{len(s.trials)}").getrandbits(32)
    s = optuna.load_study(study_name=study.name, storage=storage, pruner=pruner[study.pruner],
                          sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True))  # fmt: skip
    ours = {"config": study.base.to_dict(), "space": {k: p.to_dict() for k, p in study.space.items()}}
    theirs = {k: s.user_attrs[k] for k in ours if k in s.user_attrs}
    if theirs and theirs != ours:
        differ = _differences(theirs, ours)
        raise NinError(f"study {study.name!r} in {study.storage} was started with other settings ({differ}); "
                       "give the same settings to finish it, or another --out (or --study) for a new one")  # fmt: skip
    for key, value in ours.items():
        s.set_user_attr(key, value)
    return s


def _differences(theirs: dict, ours: dict) -> str:
    out = []
    for key in ("config", "space"):
        a, b = theirs.get(key, {}), ours[key]
        out += [f"{key} {k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)]  # fmt: skip
    return "; ".join(out[:4]) + ("; ..." if len(out) > 4 else "")


def counted(s: Any, before: int | None = None) -> int:
    """Trials that count towards the total: complete, pruned and running (of number < `before`)."""
    state = optuna_module().trial.TrialState
    trials = s.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING))
    return sum(before is None or t.number < before for t in trials)


def fail_dead_trials(s: Any) -> list[int]:
    """Mark failed the running trials of this machine whose process is gone (killed: SIGKILL, a crash of the
    machine); returns their numbers. Other machines' dead trials fail by their missing heartbeat."""
    state, host, dead = optuna_module().trial.TrialState, socket.gethostname(), []
    for t in s.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if t.user_attrs.get("host") == host and not _alive(t.user_attrs.get("pid", 0)):
            s.tell(t.number, state=state.FAIL, skip_if_finished=True)
            dead.append(t.number)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return pid > 0


def trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


def check_trial_dirs(study: Study, s: Any) -> None:
    """DIR/trials/ holds no run of a trial this study does not know (a deleted study's, another study's)."""
    known = {trial_dir(study.out, t.number).name for t in s.get_trials(deepcopy=False)}
    folder = study.out / "trials"
    strangers = (
        sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in known) if folder.is_dir() else []
    )
    if strangers:
        raise NinError(f"{folder} holds runs that are not trials of study {study.name!r} in {study.storage} "
                       f"({', '.join(strangers[:3])}{', ...' if len(strangers) > 3 else ''}); choose another --out, "
                       "or the study they belong to (--storage, --study)")  # fmt: skip


def objective(study: Study, s: Any, trial: Any) -> float:
    """One trial: draw its settings, train its run, report each epoch's validation accuracy to the pruner."""
    optuna = optuna_module()
    trial.set_user_attr("pid", os.getpid())  # before the host: a trial of this host always says its process
    trial.set_user_attr("host", socket.gethostname())
    if counted(s, before=trial.number) >= study.trials:
        trial.set_user_attr("surplus", True)
        raise Surplus
    params = {name: p.suggest(trial, name) for name, p in study.space.items()}
    config = from_dict({**study.base.to_dict(), **params}, source=f"trial {trial.number}")
    run = trial_dir(study.out, trial.number)
    trial.set_user_attr("run", str(run))

    def report(metrics: dict) -> None:
        trial.report(metrics["val_acc"], metrics["epoch"])
        trial.set_user_attr("epochs", metrics["epoch"])
        if trial.should_prune():
            raise Pruned(f"after epoch {metrics['epoch']}")

    run.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(run.with_suffix(".log"), "w", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
            history = train(config, run, study.data_dir, on_epoch=report)
    except Pruned:
        raise optuna.TrialPruned() from None
    except Diverged:  # a bad corner of the space: ended like a pruned trial, so that the sampler avoids it
        trial.set_user_attr("diverged", True)
        raise optuna.TrialPruned() from None
    return history[-1]["val_acc"]


def progress(study: Study, s: Any, t: Any) -> None:
    """The line each finished trial prints."""
    state = t.state.name.lower()
    if t.user_attrs.get("surplus"):
        return
    value = t.value if t.value is not None else (t.intermediate_values or {}).get(t.last_step)
    how = {"pruned": f"pruned after epoch {t.last_step}" if t.last_step else "pruned"}.get(state, state)
    if t.user_attrs.get("diverged"):
        how = "diverged"
    score = f"val acc {value:.4f}" if value is not None else "no epoch"
    seconds = t.duration.total_seconds() if t.duration else 0.0
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    try:
        best = f"best {s.best_value:.4f} (trial {s.best_trial.number:04d})"
    except ValueError:  # no complete trial yet
        best = "no complete trial yet"
    print(f"trial {t.number:04d} {how}: {score}, {seconds:.0f} s; {params} [{counted(s)}/{study.trials}, {best}]",
          flush=True)  # fmt: skip


def work(study: Study, s: Any, threads: int) -> None:
    """Run trials of the loaded study `s` until it has its total (or the timeout passes), on `threads` threads
    (then the caller's count again: `nin.tune` from a notebook leaves the kernel as it was)."""
    if counted(s) >= study.trials:
        return

    def done(s: Any, t: Any) -> None:
        progress(study, s, t)
        if counted(s) >= study.trials:
            s.stop()

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s.optimize(lambda trial: objective(study, s, trial), timeout=study.timeout, catch=(Surplus,),
                   callbacks=[done], gc_after_trial=False)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _worker(study: Study, worker: int, threads: int) -> None:
    """A spawned process of `jobs`: its errors are said in one line, like the command's."""
    try:
        work(study, load(study, worker), threads)
    except (NinError, OSError) as e:
        print(f"nin: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (Exception, KeyboardInterrupt) as e:  # Stopped, or Ctrl-C: the signal reached every process
        print(f"nin: tune process {worker}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def tune(study: Study, jobs: int = 1) -> Any:
    """Run the study in `jobs` processes on this machine, each with its share of the cores; returns it."""
    if jobs < 1:
        raise NinError(f"--jobs {jobs}: give the number of processes, 1 or more")
    s = load(study)
    check_trial_dirs(study, s)
    if dead := fail_dead_trials(s):
        print(f"trial(s) {', '.join(f'{n:04d}' for n in dead)}: their process is gone; marked failed")
    left = study.trials - counted(s)
    print(f"study {study.name!r} in {study.storage}: {counted(s)} of {study.trials} trials done or running"
          + (f"; {left} to go, {jobs} process(es) x {max(usable_cores() // jobs, 1)} threads" if left > 0 else
             ": nothing left to run"))  # fmt: skip
    threads = max(usable_cores() // jobs, 1)
    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=_worker, args=(study, w, threads)) for w in range(1, jobs if left > 0 else 1)]
    for p in helpers:
        p.start()
    try:
        work(study, s, threads)
    finally:
        for p in helpers:
            p.join()
    if failed := [p.exitcode for p in helpers if p.exitcode]:
        raise NinError(f"{len(failed)} of the tune processes failed (said above)")
    return load(study)


def summary(study: Study, s: Any) -> dict:
    """tune.json: the best trial, counts by state, and every trial (number, state, score, settings, time)."""
    rows = [{"trial": t.number, "state": t.state.name.lower(), "val_acc": t.value,
             "last_val_acc": (t.intermediate_values or {}).get(t.last_step) if t.last_step is not None else None,
             "epochs": t.user_attrs.get("epochs"), "params": t.params,
             "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
             "run": t.user_attrs.get("run"), **{k: True for k in ("diverged", "surplus") if t.user_attrs.get(k)}}
            for t in s.get_trials(deepcopy=False)]  # fmt: skip
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["val_acc"]) if complete else None
    return {
        "study": study.name,
        "storage": study.storage,
        "objective": f"validation accuracy on {study.base.val_split:,} held-out training images, last epoch",
        "trials": study.trials,
        "states": states,
        "best": best
        and {
            "trial": best["trial"],
            "val_acc": best["val_acc"],
            "params": best["params"],
            "run": best["run"],
        },  # fmt: skip
        "space": {k: p.to_dict() for k, p in study.space.items()},
        "config": study.base.to_dict(),
        "history": rows,
    }


def importances(s: Any) -> dict[str, float]:
    """Each searched setting's share of the score's variation (Optuna's default evaluator, PED-ANOVA); empty
    under 10 complete trials: PED-ANOVA sets the top 10% of the trials against all of them."""
    optuna = optuna_module()
    if len(s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < 10:
        return {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = optuna.importance.get_param_importances(s)
        except (ValueError, RuntimeError):  # no complete trial
            return {}
    return {} if any("importances will be equal" in str(w.message) for w in caught) else found


def write_outputs(study: Study, s: Any) -> dict:
    """DIR/tune.json, DIR/space.toml (the space searched: edit it, pass it back with --space), DIR/tune.png and,
    once a trial is complete, DIR/best.toml: the winner's settings on all the training data (no validation
    split, no --train-limit), for `nin train --config DIR/best.toml`. Returns tune.json's content."""
    result = summary(study, s)
    out = study.out
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "space.toml", to_toml({k: p.to_dict() for k, p in study.space.items()}))
    if best := result["best"]:
        config = from_dict({**study.base.to_dict(), **best["params"], "val_split": 0, "train_limit": 0})
        head = (f"# nin tune: the best of {sum(result['states'].values())} trials of study {study.name!r} (trial "
                f"{best['trial']:04d}, validation accuracy {best['val_acc']:.4f}; its run: {best['run']}).\n"
                f"# {retrain_command(study)} trains it on all the training data.\n")  # fmt: skip
        atomic_write_text(out / "best.toml", head + to_toml(config.to_dict()))
    plot_tune(result["history"], importances(s), out / "tune.png",
              f"study {study.name}: " + ", ".join(f"{n} {state}" for state, n in result["states"].items()))  # fmt: skip
    return result


def retrain_command(study: Study) -> str:
    """The command that trains the winner on all the training data: best.toml, and the folder the study read
    (a flag, not a setting: a config file does not hold it)."""
    folder = f" --data-dir {shlex.quote(str(study.data_dir))}" if study.data_dir is not None else ""
    return f"nin train --config {shlex.quote(str(study.out / 'best.toml'))}{folder}"


def prepare(base: Config, name: str, fixed: set[str], out: Path | None = None, space: Path | None = None,
            storage: str | None = None, study: str | None = None, **options: Any) -> Study:  # fmt: skip
    """The study of `nin tune`: `base` (a preset or config file with the flags `fixed` on top) with a validation
    split (default: 10,000 images, a folder's sixth), the space (`space` file, else the preset's default),
    the output folder (default runs/tune-NAME: the same command finds the same study), its storage (default
    SQLite there) and study name (default the folder's name)."""
    if options.get("trials", 1) < 1:
        raise NinError(f"--trials {options['trials']}: give the study's total number of trials, 1 or more")
    data_dir = options.get("data_dir")
    if base.dataset == "folder" and data_dir and not any((Path(data_dir) / d).is_dir() for d in ("test", "val")):
        # without one, training tests on the held-out images (data/subsets.py), and the trials need them apart
        raise NinError(f"{data_dir}: no test/ (or val/) folder; nin tune scores trials on held-out training "
                       "images and keeps the test images apart: the folder needs test images of its own")  # fmt: skip
    if not base.val_split:
        base = from_dict({**base.to_dict(), "val_split": default_val_split(base, data_dir)})
    out = Path(out) if out is not None else Path("runs") / f"tune-{name}"
    searched = read_space(space, base, fixed) if space else default_space(base, fixed)
    if not searched:
        raise NinError(
            "every setting of the default space is fixed by a flag; search some (--space FILE) or drop flags"
        )
    if out.exists() and not out.is_dir():
        raise NinError(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return Study(out, storage or default_storage(out), study or out.resolve().name, base, searched, **options)


def default_val_split(config: Config, data_dir: Path | None) -> int:
    """10,000 images of a built-in dataset (of 50,000 or 60,000); a sixth of a folder's, counted undecoded."""
    if config.dataset != "folder":
        return 10_000
    if data_dir is None:
        raise NinError("--dataset folder needs --data-dir")
    return max(decoded_bytes(Path(data_dir), config.image_size)[0] // 6, 1)
