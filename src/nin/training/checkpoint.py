"""Checkpoints: written atomically, loaded with `weights_only=True`, checked to be ours."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct
import warnings
from pathlib import Path

import torch

from nin.config import Config, load_preset
from nin.data.idx import IDX
from nin.data.registry import load_split
from nin.data.types import Spec
from nin.errors import NinError
from nin.inference.description import describe
from nin.io import atomic_torch_save
from nin.models.nin import check_resize
from nin.models.registry import build

FORMAT = "nin-checkpoint-v2"  # v2: exact-resume position, per-rank RNG states, SHA-256
# What torch.load(weights_only=True) raises for a damaged or foreign file (tests/fuzz finds them): its zip reader's
# RuntimeError, the weights-only unpickler's UnpicklingError, and what a malformed pickle makes the unpickler's
# steps raise (EOFError, struct.error, ValueError, IndexError and KeyError; TypeError and AttributeError where it
# hands torch's rebuild functions arguments of the wrong kind; AssertionError from torch's own checks of a
# persistent id). Any other exception is a bug and surfaces.
DAMAGED = (pickle.UnpicklingError, RuntimeError, OSError, EOFError, struct.error, ValueError, LookupError, TypeError,
           AttributeError, AssertionError)  # fmt: skip


def save_checkpoint(
    path: Path,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict,
    config: Config,
    spec: Spec,
    metrics: list[dict],
    rng: list,
    cuda_rng: list,
) -> None:
    """Everything needed to continue the run exactly, or to evaluate it.

    `position`: completed epochs, completed steps of the current epoch, the epoch's running sums
    (loss, correct, examples, seconds) and the number of processes; `spec`: the data's classes,
    channels and image size; `rng`/`cuda_rng`: each rank's state.
    """
    state = {
        "format": FORMAT,
        "model": net.state_dict(),  # same keys as the seed's nn.Sequential
        "optimizer": optimizer.state_dict(),
        "position": position,
        "config": config.to_dict(),
        "data": describe(config, spec, net.state_dict()),  # the model's description, as config.json holds it
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
    return _check(path, _read(path))


def is_checkpoint(path: Path) -> bool:
    """True if `path` is a checkpoint nin wrote, of any format version, even one whose contents were damaged
    since (a run's to replace); False for a missing file or anything else."""
    try:
        state = _read(path) if path.is_file() else None
    except NinError:
        return False
    return isinstance(state, dict) and str(state.get("format", "")).startswith("nin-checkpoint-")


def read_model_state(path: Path, resize: int | None = None, dataset: str | None = None) -> dict:
    """What `nin.load` reads: a nin checkpoint, or a bare state_dict of the seed's `nn.Sequential` (the
    notebook's `torch.save(net.state_dict(), path)`) or of nin-bn, recognised by its keys and shapes. A
    bare state_dict gets the d2l preset's settings (fast's for nin-bn) at `resize` (default: the preset's,
    224 for the seed's NiN), the data of `dataset` (default: Fashion-MNIST for 1 channel and 10 classes), no
    metrics and no record; its `note` says in one line what was assumed."""
    state = _read(path)
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        config, spec = _recognise(state, path, resize, dataset)
        note = (f"{path} is a bare state_dict: taken as {config.arch} at {config.resize}x{config.resize} on "
                f"{spec.dataset} data{'' if dataset else ' (assumed)'}; --dataset and --resize say "
                "otherwise")  # fmt: skip
        return {"model": state, "config": config.to_dict(), "data": spec.to_dict(), "metrics": [], "note": note}
    state = _check(path, state)
    for flag, value in (("--resize", resize), ("--dataset", dataset)):
        if value is not None:
            raise NinError(f"{flag} {value}: {path} is a nin checkpoint, trained at {state['config']['resize']}x"
                           f"{state['config']['resize']} on {state['config'].get('dataset', 'fashion-mnist')}; "
                           f"{flag} is for a bare state_dict")  # fmt: skip
    return state


def _read(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # a foreign file's "Detected pickle protocol 4": its error says enough
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except DAMAGED as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NinError(
            f"{path}: not a readable nin checkpoint ({first_line[:200]}); "
            "it may be truncated or from another program: use a checkpoint.pt written by `nin train`"
        ) from None


def _check(path: Path, state: object) -> dict:
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


def _recognise(weights: dict, path: Path, resize: int | None, dataset: str | None) -> tuple[Config, Spec]:
    """The settings of the network whose state_dict `weights` is (the seed's NiN, or nin-bn of some width)
    and the spec of its data: `dataset`'s, else Fashion-MNIST's for 1 channel and 10 classes (channels and
    classes from the first and last weights)."""
    candidates = [load_preset("d2l")]
    if "0.0.weight" in weights and "0.1.running_mean" in weights:  # BatchNorm after the first conv: nin-bn
        candidates.append(dataclasses.replace(load_preset("fast"), width=weights["0.0.weight"].shape[0]))
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    convs = [v for v in weights.values() if v.dim() == 4]  # the first and the last convolution's weights
    channels, classes = (convs[0].shape[1], convs[-1].shape[0]) if convs else (1, 10)
    spec = _data_of(dataset, path) if dataset else Spec()
    if (spec.channels, len(spec.classes)) != (channels, classes):
        if dataset:
            raise NinError(f"--dataset {dataset}: {path} is a network for {channels} channel(s) and {classes} "
                           f"classes, and {dataset} has {spec.channels} and {len(spec.classes)}")  # fmt: skip
        spec = Spec("unknown", tuple(str(i) for i in range(classes)), channels)  # class names unknown
    for config in candidates:
        net = build(config.arch, config.dropout, config.width, channels, classes)
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes:
            config = dataclasses.replace(config, resize=resize or config.resize)
            check_resize(net, config.resize)
            return config, spec
    raise NinError(
        f"{path}: not a nin checkpoint, and a state_dict of a network nin does not know: its keys and shapes "
        "are neither the seed's NiN (d2l's nn.Sequential) nor nin-bn's; use a checkpoint.pt written by nin train"
    )


def _data_of(dataset: str, path: Path) -> Spec:
    """The spec of a named dataset, for a bare state_dict: class names and channels without the training data."""
    if dataset in IDX:
        return Spec(dataset, IDX[dataset].classes, 1, 28)
    if dataset == "folder":
        raise NinError(f"--dataset folder: a bare state_dict cannot name a folder's classes; export {path} from "
                       "its run directory (nin export RUN_DIR), which keeps them")  # fmt: skip
    test = load_split(dataset, "test")  # CIFAR's class names are in its archive
    return Spec(dataset, test.classes, test.images.shape[1], test.images.shape[-1])
