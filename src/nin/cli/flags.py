"""The flags several commands share, and the settings and model they name."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from nin.api import DEFAULT_PRESET, Run, configure, load, load_weights
from nin.config import FIELDS, Config, field_types, presets
from nin.errors import NinError


def add_model(p: argparse.ArgumentParser, metavar: str = "RUN_DIR|MODEL_DIR|CHECKPOINT") -> None:
    p.add_argument("checkpoint", type=Path, nargs="?", metavar=metavar)
    p.add_argument("--weights", metavar="NAME", help="weights that ship with nin instead (`nin weights` lists "
                   "them); outputs then default to the current directory, as NAME-<file>")  # fmt: skip


def load_model(args: argparse.Namespace) -> Run:
    """The run a command works on: RUN_DIR|CHECKPOINT, or the shipped weights of --weights."""
    if args.weights is None:
        if args.checkpoint is None:
            raise NinError("give a run directory or checkpoint, or --weights NAME (`nin weights` lists them)")
        return load(args.checkpoint, args.resize, args.dataset)
    if args.checkpoint is not None and not hasattr(args, "images"):  # predict and cam take it as an image
        raise NinError(f"give either {args.checkpoint} or --weights {args.weights}, not both")
    for flag, value in (("--resize", args.resize), ("--dataset", args.dataset)):
        if value is not None:
            raise NinError(f"{flag} {value}: shipped weights know their input size and data; {flag} is for a bare "
                           "state_dict")  # fmt: skip
    return load_weights(args.weights)


def images_of(args: argparse.Namespace) -> list[Path]:
    """The IMAGE arguments: with --weights, the first positional argument is an image too."""
    return [args.checkpoint, *args.images] if args.weights and args.checkpoint else args.images


def add_resize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resize", type=int, help="for a bare state_dict of the seed's nn.Sequential: its input side "
                   "length (default 224); a nin checkpoint knows its own")  # fmt: skip
    p.add_argument("--dataset", choices=[d for d in FIELDS["dataset"].metadata["choices"] if d != "folder"],
                   help="for a bare state_dict: the data it was trained on, which names its classes (default: "
                   "fashion-mnist, said on stderr); a nin checkpoint knows its own")  # fmt: skip


def add_config_flags(p: argparse.ArgumentParser, cls: type = Config) -> None:
    """One flag per field of the dataclass `cls`, typed by its type hint (a bool field gets --x/--no-x;
    an optional one also takes 'none'). Flags not given are absent from the parsed namespace."""
    for f, (kind, optional) in zip(dataclasses.fields(cls), field_types(cls).values()):
        flag, help = f"--{f.name.replace('_', '-')}", f.metadata.get("help")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help)
        else:
            choices = f.metadata.get("choices") or None
            p.add_argument(flag, type=_parse(kind, optional), choices=choices, default=argparse.SUPPRESS, help=help)


def _parse(kind: type, optional: bool):
    def parse(text: str) -> object:
        return None if optional and text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def add_run_flags(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"a bundled recipe: {', '.join(presets())} (default {DEFAULT_PRESET})")
    source.add_argument("--config", type=Path, help="a TOML or JSON config file (e.g. a run's config.json)")
    add_config_flags(p)


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        help="the dataset's folder: the four IDX .gz files (Fashion-MNIST, MNIST), the CIFAR archive (downloaded "
        "there if missing), or the image folder of --dataset folder (default $NIN_DATA_DIR/<dataset>, else the "
        "bundled copy, else ~/.cache/nin/<dataset>; a run trained with --data-dir remembers it)",
    )


def settings_of(args: argparse.Namespace) -> dict:
    """The `Config` fields given as flags."""
    return {k: getattr(args, k) for k in FIELDS if hasattr(args, k)}


def config_of(args: argparse.Namespace) -> tuple[Config, str]:
    """The settings of a new run: the preset's or the config file's, then the flags given; and its name."""
    return configure(args.config or args.preset, **settings_of(args))
