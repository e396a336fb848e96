"""`nin sweep`: one recipe over many seeds, to measure how reliably it converges.

d2l's own NiN runs sometimes stay at chance or diverge; a single lucky run proves nothing. A sweep
trains the same config with seeds 0..N-1 (the seed draws the initial weights, the dropout masks and
the data order) and prints the distribution of test accuracies and how many runs failed.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from nin.config import Config
from nin.data.registry import shape_of
from nin.errors import NinError
from nin.io import atomic_write_text
from nin.runtime import is_main_process
from nin.training.guards import Diverged
from nin.training.loop import train


def failed_below(classes: int) -> float:
    """The test accuracy under which a run counts as failed: 5 x chance (0.5 for 10 classes, where chance is
    0.1; 0.05 for 100), and for fewer than 9 classes, where 5 x chance is out of reach or nearly, halfway
    from chance to 1 (0.75 for 2)."""
    return min(5 / classes, (1 + 1 / classes) / 2)


def sweep(config: Config, seeds: int, out_dir: Path, data_dir: Path | None = None) -> dict:
    """Train `config` with seeds 0..seeds-1, each in out_dir/seed-<n>; write and return sweep.json."""
    if seeds < 1:
        raise NinError(f"--seeds {seeds}: give the number of seeds to run, e.g. 20")
    log = print if is_main_process() else lambda *a, **k: None  # under torchrun, rank 0 alone reports
    threshold = failed_below(shape_of(config.dataset, data_dir)[1])
    runs = []
    for seed in range(seeds):
        start = time.perf_counter()
        try:
            history = train(dataclasses.replace(config, seed=seed), out_dir / f"seed-{seed}", data_dir)
            acc, status = history[-1]["test_acc"], "ok" if history[-1]["test_acc"] >= threshold else "failed"
        except Diverged:  # the trainer stopped the run and said why
            acc, status = None, "diverged"
        runs.append({"seed": seed, "test_acc": acc, "status": status, "seconds": time.perf_counter() - start})
        log(f"sweep: seed {seed}: {status}, test acc {acc if acc is None else f'{acc:.4f}'}", flush=True)
    accs = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    result = {
        "config": config.to_dict(),
        "runs": runs,
        "failed": sum(r["status"] != "ok" for r in runs),
        "failed_below": threshold,
        **({"min": min(accs), "median": statistics.median(accs), "max": max(accs)} if accs else {}),
    }
    if is_main_process():
        atomic_write_text(out_dir / "sweep.json", json.dumps(result, indent=2) + "\n")
    return result
