"""The run directory: the one place that knows a run's files, writes them atomically, and keeps its record.

A run directory holds everything one run made (the table `FILES`). A new run refuses a non-empty
folder unless `force` and the folder holds a nin run (a valid run record, or a checkpoint nin wrote), in
which case every file of the old run is removed (`clear`) before the new run writes, so that nothing of
it can pass for the new run's. Files the run does not know are the user's and stay; a folder of the
user's own (its config.json and report.html are not a run's) is never cleared.

`run.json` is the run record: how the run was made (nin version and commit, command line, torch,
device and CPU features, threads, processes, the precision that actually ran, start and end, wall
time). A resumed run appends a session, so a run continued on another machine says so.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nin.errors import NinError
from nin.io import atomic_write_text
from nin.training.checkpoint import is_checkpoint
from nin.training.guards import Diverged, Pruned, Stopped
from nin.training.provenance import provenance

# key -> (file name, what writes it)
FILES = {
    "checkpoint": ("checkpoint.pt", "nin train: weights, optimizer, position in the run, RNG states"),
    "config": ("config.json", "nin train: the resolved settings"),
    "record": ("run.json", "nin train: how the run was made, one entry per session"),
    "metrics": ("metrics.jsonl", "nin train: one line of metrics per epoch"),
    "curves": ("curves.png", "nin train: loss and accuracy per epoch"),
    "confusion": ("confusion_matrix.png", "nin evaluate"),
    "cam": ("cam.png", "nin cam: class activation maps"),
    "report": ("report.html", "nin report"),
    "compare_json": ("compare.json", "nin compare --out RUN_DIR"),
    "compare_md": ("compare.md", "nin compare --out RUN_DIR"),
    "compare_png": ("compare.png", "nin compare --out RUN_DIR"),
    "weights": ("weights.pt", "nin export: the weights as a plain state_dict"),
    "weights_description": ("weights.json", "nin export: the state_dict's description (network, classes, input)"),
    "onnx": ("model.onnx", "nin export --format onnx"),
    "onnx_int8": ("model-int8.onnx", "nin export --format onnx --quantize int8"),
}


class RunDir:
    """A run's folder. `run.file("curves")` is where its curves go; only rank 0 should write."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, key: str) -> Path:
        return self.path / FILES[key][0]

    @classmethod
    def for_new_run(cls, path: Path, force: bool = False) -> RunDir:
        """The folder of a new run, checked: missing, empty, or (with `force`) holding a nin run to replace.
        Nothing is removed yet: `clear` does that once the run's settings and data have been checked."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise NinError(f"--out {run.path} is a file, not a directory")
        if not run.path.exists() or not any(run.path.iterdir()):
            return run
        if not run.holds_run():  # --force or not: nothing here is a run's to replace
            raise NinError(f"{run.path} already exists, is not empty and holds no nin run (no run record "
                           f"{FILES['record'][0]} nor {FILES['checkpoint'][0]} written by nin train), so nothing "
                           "in it is replaced, even with --force; choose another --out")  # fmt: skip
        if not force:
            raise NinError(f"{run.path} already exists and is not empty; choose another --out, or pass --force "
                           "to replace the run in it")  # fmt: skip
        return run

    def holds_run(self) -> bool:
        """True if the folder holds a nin run: a valid run record (a run stopped before its first checkpoint
        has one), or a checkpoint nin wrote. Files of the same names that are not nin's do not count."""
        try:
            record = self.record()
        except NinError:  # a run.json that is not a run record
            record = None
        return record is not None or is_checkpoint(self.file("checkpoint"))

    def clear(self, keep_record: bool = False) -> None:
        """Remove every file of an earlier run here (so that none passes for the new run's), but the run
        record if `keep_record` (a restart of the same run); create the folder."""
        for key in FILES:
            if not (keep_record and key == "record"):
                self.file(key).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, path: Path) -> tuple[RunDir, Path]:
        """A run directory or a checkpoint file -> (its run directory, its checkpoint file)."""
        path = Path(path)
        checkpoint = cls(path).file("checkpoint") if path.is_dir() else path
        if not checkpoint.is_file():
            raise NinError(
                f"{checkpoint}: no such checkpoint; pass a run directory made by `nin train` or its "
                f"{FILES['checkpoint'][0]}"
            )
        return cls(checkpoint.parent), checkpoint

    def write_text(self, key: str, text: str) -> Path:
        atomic_write_text(self.file(key), text)
        return self.file(key)

    def write_json(self, key: str, value: object) -> Path:
        return self.write_text(key, json.dumps(value, indent=2) + "\n")

    def read_json(self, key: str) -> object:
        path = self.file(key)
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise NinError(f"{path}: not valid JSON ({e}); it was not written by nin, or was edited") from None

    # the run record -----------------------------------------------------------------------------

    def record(self) -> dict | None:
        """The run record, or None for a run made before records existed (or not by nin train)."""
        if not self.file("record").is_file():
            return None
        record = self.read_json("record")
        sessions = record.get("sessions") if isinstance(record, dict) else None
        if (
            not sessions
            or not isinstance(sessions, list)
            or not all(isinstance(s, dict) and {"command", "started", "status"} <= set(s) for s in sessions)
        ):
            raise NinError(f"{self.file('record')}: not a nin run record (no 'sessions' list of sessions, each "
                           "with its command, start and status)")  # fmt: skip
        return record

    @contextmanager
    def session(self, precision: str, world_size: int, device: str, history: list[dict]) -> Iterator[None]:
        """Append this process's session to run.json (a new run starts the list) and complete it when
        the block ends: when, its wall time, how it ended, and the epochs done by then (`len(history)`).
        A session still marked running when the next one starts died without a word (SIGKILL)."""
        record = self.record() or {"sessions": []}
        for earlier in record["sessions"]:
            if earlier["status"] == "running":  # one writer at a time: it ended without a word (killed)
                earlier["status"] = "died"
        session = {
            "command": command_line(),
            "started": _now(),
            "finished": None,
            "wall_seconds": None,
            "status": "running",
            "epochs_before": len(history),
            "epochs_after": None,
            "precision": precision,
            "world_size": world_size,
            # torchrun's count of the times it restarted the job's workers (None outside torchrun)
            "elastic_restart": int(os.environ["TORCHELASTIC_RESTART_COUNT"])
            if "TORCHELASTIC_RESTART_COUNT" in os.environ
            else None,
            **provenance(device),
        }
        record["sessions"].append(session)
        self.write_json("record", record)
        start, status = time.perf_counter(), "failed"
        try:
            yield
            status = "finished"
        except Stopped:
            status = "stopped"
            raise
        except Diverged:
            status = "diverged"
            raise
        except Pruned:
            status = "pruned"
            raise
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            session.update(finished=_now(), wall_seconds=round(time.perf_counter() - start, 3), status=status,
                           epochs_after=len(history))  # fmt: skip
            self.write_json("record", record)


def new_run_path(name: str) -> Path:
    """runs/<name>-<date>-<time> under the working directory; -2, -3, ... appended while that is taken."""
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def command_line() -> list[str]:
    """How this process was started, as a person would type it (`nin ...` or `python -m nin ...`)."""
    program = Path(sys.argv[0]).name
    return [*(["python", "-m", "nin"] if program == "__main__.py" else [program]), *sys.argv[1:]]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
