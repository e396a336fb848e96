"""Checkpoints: written atomically, loaded with `weights_only=True`, checked to be ours."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from nin.config import Config, from_dict
from nin.errors import NinError
from nin.io import atomic_torch_save
from nin.model import NiN, build

FORMAT = "nin-checkpoint-v2"  # v2: exact-resume position, per-rank RNG states, SHA-256


def save_checkpoint(
    path: Path,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict,
    config: Config,
    metrics: list[dict],
    rng: list,
    cuda_rng: list,
) -> None:
    """Everything needed to continue the run exactly, or to evaluate it.

    `position`: completed epochs, completed steps of the current epoch, the epoch's running sums
    (loss, correct, examples, seconds) and the number of processes; `rng`/`cuda_rng`: each rank's state.
    """
    state = {
        "format": FORMAT,
        "model": net.state_dict(),  # same keys as the seed's nn.Sequential
        "optimizer": optimizer.state_dict(),
        "position": position,
        "config": config.to_dict(),
        "metrics": metrics,
        "rng": {"torch": rng, "cuda": cuda_rng},
    }
    state["sha256"] = digest(state)
    atomic_torch_save(state, path)


def digest(state: object) -> str:
    """SHA-256 over every tensor's bytes and every other value, in a fixed order.

    torch.load does not notice flipped bytes inside tensor data; comparing this digest does.
    """
    h = hashlib.sha256()

    def walk(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"tensor {t.dtype} {tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                if key != "sha256":
                    h.update(f"{key!r}=".encode())
                    walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for item in obj:
                walk(item)
            h.update(b"]")
        else:
            h.update(f"{obj!r};".encode())

    walk(state)
    return h.hexdigest()


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file's contents, checked to be a nin checkpoint of this format, undamaged."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NinError(
            f"{path}: not a readable nin checkpoint ({first_line[:200]}); "
            "it may be truncated or from another program: use a checkpoint.pt written by `nin train`"
        ) from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("nin-checkpoint-"):
        raise NinError(
            f"{path}: not a nin checkpoint (no '{FORMAT}' marker); use a checkpoint.pt written by `nin train`"
        )
    if state["format"] != FORMAT:
        raise NinError(f"{path}: a {state['format']} checkpoint from another version of nin; this one reads "
                       f"{FORMAT}: train again, or use the nin version that wrote it")  # fmt: skip
    if not all(isinstance(state.get(key), dict) for key in ("model", "config", "position")) or (
        state.get("sha256") != digest(state)
    ):
        raise NinError(f"{path}: damaged nin checkpoint (its contents do not match their SHA-256); use another one")
    return state


def model_from_state(state: dict, path: Path) -> tuple[NiN, Config]:
    """The trained network (in eval mode, on the CPU) and the config it was trained with, from the
    contents of the checkpoint file `path` (named in errors)."""
    config = from_dict(state["config"], source=str(path))
    net = build(config.arch, config.dropout, config.width)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise NinError(f"{path}: weights do not fit the {config.arch} model ({str(e).splitlines()[0]})") from None
    return net.eval(), config
