"""`nin tune` (an Optuna study of short training runs) and `nin benchmark` (a trained model's forms on this
machine): the choosing done for the user."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nin.cli.flags import add_data_dir, add_model, add_resize, add_run_flags, config_of, load_model, settings_of
from nin.training.tune import PRUNERS


def add_choose(commands: argparse._SubParsersAction) -> None:
    """The parsers of tune and benchmark."""
    p = commands.add_parser(
        "tune",
        help="an Optuna study of short training runs: the best settings for your data",
        description="Flags of train are fixed for every trial; the trials draw the rest from the "
        "search space and are scored on held-out training images (--val-split, default 10,000; "
        "a folder's sixth). The same command again finishes the remainder (docs/recipes.md).",
    )
    add_run_flags(p)
    p.add_argument("--trials", type=int, required=True, help="the study's total number of trials")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no trial after SECONDS")
    p.add_argument("--space", type=Path, metavar="FILE", help="a TOML search space (default: the preset's; the "
                   "one searched is written to DIR/space.toml)")  # fmt: skip
    p.add_argument("--storage", metavar="URL", help="the study's SQLAlchemy URL (default sqlite:///DIR/study.db); "
                   "processes on one storage and study share its trials")  # fmt: skip
    p.add_argument("--study", metavar="NAME", help="the study's name in the storage (default: DIR's name)")
    p.add_argument("--pruner", default="median", choices=PRUNERS, help="ends a trial "
                   "early from its validation curve (default median)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="trials at once on this machine, each in its own process "
                   "with its share of the cores (default 1)")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="DIR", help="trials/, study.db, best.toml, tune.json, tune.png "
                   "(default runs/tune-<preset>)")  # fmt: skip
    add_data_dir(p)

    p = commands.add_parser("benchmark", help="each form of a trained model on this machine: accuracy, size, "
                            "latency, throughput")  # fmt: skip
    add_model(p, "RUN_DIR|MODEL_DIR")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE", help="also draw latency and throughput to a PNG")
    p.add_argument("--repeats", type=int, default=200, help="batch-1 calls per form (default 200)")
    p.add_argument("--rounds", type=int, default=20, help="timed batches of 256 per form (default 20)")
    p.add_argument(
        "--test-limit", type=int, default=0, help="accuracy on N test images only, drawn from every class in proportion"
    )
    add_data_dir(p)
    add_resize(p)


def tune(args: argparse.Namespace) -> int:
    from nin.training.guards import Stopped
    from nin.training.tune import optuna_module, prepare, retrain_command, write_outputs
    from nin.training.tune import tune as run_study

    optuna_module()  # the missing extra is the first thing to hear about
    config, name = config_of(args)
    study = prepare(config, name, set(settings_of(args)), args.out, args.space, args.storage, args.study,
                    trials=args.trials, pruner=args.pruner, seed=config.seed, timeout=args.timeout,
                    data_dir=args.data_dir)  # fmt: skip
    try:
        s = run_study(study, args.jobs)
    except Stopped as e:
        print(f"nin: {e}; the trial is marked failed, and the same command finishes the study", file=sys.stderr)
        return 128 + e.signum
    result = write_outputs(study, s)
    best = result["best"]
    print(", ".join(f"{n} {state}" for state, n in result["states"].items()) + "; " + (
          f"best: trial {best['trial']:04d}, val acc {best['val_acc']:.4f}, {best['params']}" if best
          else "no trial complete yet"))  # fmt: skip
    print(f"wrote {study.out / 'tune.json'}, {study.out / 'tune.png'}" + (
          f"; {retrain_command(study)} trains the best on all the training data" if best else ""))  # fmt: skip
    return 0


def benchmark(args: argparse.Namespace) -> int:
    from nin.inference.benchmark import benchmark as run_benchmark
    from nin.inference.benchmark import render

    result = run_benchmark(load_model(args), args.data_dir, args.repeats, args.rounds, args.test_limit, args.plot)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0
