"""Checkpoints: written atomically, loaded with `weights_only=True`, checked to be ours."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from nin.config import Config, from_dict
from nin.errors import NinError
from nin.io import atomic_torch_save
from nin.model import NiN

FORMAT = "nin-checkpoint-v1"
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(
    path: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, config: Config, metrics: list[dict]
) -> None:
    """Everything needed to continue or evaluate the run after `epoch` completed epochs."""
    state = {
        "format": FORMAT,
        "model": net.state_dict(),  # same keys as the seed's nn.Sequential
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "config": config.to_dict(),
        "metrics": metrics,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    atomic_torch_save(state, path)


def resolve(path: Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise NinError(f"{path}: no such checkpoint; pass a run directory made by `nin train` or its {CHECKPOINT}")
    return path


def load_checkpoint(path: Path) -> dict:
    path = resolve(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NinError(
            f"{path}: not a readable nin checkpoint ({first_line[:200]}); "
            "it may be truncated or from another program: use a checkpoint.pt written by `nin train`"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NinError(
            f"{path}: not a nin checkpoint (no '{FORMAT}' marker); use a checkpoint.pt written by `nin train`"
        )
    if not (isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict)):
        raise NinError(f"{path}: damaged nin checkpoint (no model weights or config); use another checkpoint")
    return state


def model_from_checkpoint(path: Path) -> tuple[NiN, Config]:
    """The trained network (in eval mode, on the CPU) and the config it was trained with."""
    state = load_checkpoint(path)
    config = from_dict(state["config"], source=str(path))
    net = NiN(dropout=config.dropout)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise NinError(f"{path}: weights do not fit the NiN model ({str(e).splitlines()[0]})") from None
    return net.eval(), config
