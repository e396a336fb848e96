"""Training recipes: a frozen dataclass whose defaults are the seed's, and presets as small TOML diffs.

Each field's type comes from its type hint (`int`, `float`, `str`, `bool`, or any of them `| None`);
`from_dict` checks values against it and the CLI makes one flag per field from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

from nin.data.registry import DATASETS
from nin.errors import NinError
from nin.models.nin import INITS, MAX_RESIZE
from nin.models.registry import ARCHS

PRESETS_DIR = Path(__file__).parent / "presets"
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("constant", "onecycle")
AUGMENTS = ("none", "flip", "crop", "flip-crop", "flip-crop-erase")
PRECISIONS = ("auto", "fp32", "bf16")


def _field(default: object, help: str, choices: tuple[str, ...] = ()) -> dataclasses.Field:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _same(name: str) -> dataclasses.Field:
    """Config's field `name` (default, help, choices), for another dataclass."""
    return dataclasses.field(default=FIELDS[name].default, metadata=FIELDS[name].metadata)


@dataclass(frozen=True)
class Config:
    """A training run's settings. The defaults are the seed notebook's recipe (d2l `train_ch6`); presets
    and config files change some of them, and `nin train`'s flags are these fields.

    >>> nin.Config().lr, nin.Config().resize
    (0.05, 224)
    >>> nin.Config(lr=-1)
    Traceback (most recent call last):
    nin.errors.NinError: lr must be positive, got -1
    """

    arch: str = _field(
        "nin",
        "network: nin (the seed's), nin-bn (for small input, with BatchNorm), nin-paper (the paper's CIFAR NiN) or "
        "nin-imagenet (the Caffe Model Zoo's ImageNet NiN: 1024 channels before the class maps)",
        ARCHS,
    )
    width: int = _field(64, "nin-bn only: channels of its first block, doubled in each next one (default 64)")
    resize: int = _field(224, "side length the images are resized to, bilinearly (d2l: 224)")
    dataset: str = _field(
        "fashion-mnist",
        "training data: fashion-mnist (d2l's), mnist, cifar10, cifar100, or folder (--data-dir DIR)",
        DATASETS,
    )
    normalize: bool = _field(
        False, "subtract the training set's per-channel mean and divide by its std (kept with the weights; d2l: no)"
    )
    image_size: int = _field(32, "folder only: side length the images are decoded to, once, and cached (default 32)")
    skip_bad_images: bool = _field(False, "folder only: skip (and count) unreadable images instead of stopping")
    stream: bool = _field(
        False,
        "folder only: decode the images per batch in worker processes (RandomResizedCrop + flip at --resize "
        "for training, centre crop for testing) instead of once into memory; chosen when over --memory-budget",
    )
    memory_budget: float = _field(4.0, "folder only: stream (--stream) when decoding the training images into "
                                  "memory at --image-size would take more GB than this (default 4)")  # fmt: skip
    workers: int = _field(0, "--stream: worker processes decoding images (default 0: the cores this process may use, "
                          "shared among torchrun's ranks on the machine)")  # fmt: skip
    dropout: float = _field(0.5, "dropout probability before the last mlpconv block (d2l: 0.5)")
    epochs: int = _field(5, "passes over the training data (d2l: 5)")
    batch_size: int = _field(256, "examples per SGD step (d2l: 256)")
    lr: float = _field(0.05, "SGD learning rate (d2l: 0.05)")
    momentum: float = _field(0.0, "SGD momentum (d2l: 0, plain SGD)")
    weight_decay: float = _field(0.0, "SGD weight decay, on every parameter (d2l: 0)")
    schedule: str = _field(
        "constant", "learning rate: constant (d2l), or onecycle: linear warmup to lr, then linear decay to 0", SCHEDULES
    )
    warmup: float = _field(0.0, "onecycle: the share of all steps spent warming up (default 0)")
    label_smoothing: float = _field(0.0, "cross-entropy label smoothing (d2l: 0)")
    augment: str = _field(
        "none",
        "training images: none (d2l), flip (random horizontal flip), crop (random shift up to 2 px, for digits), "
        "flip-crop (both), flip-crop-erase (and random erasing)",
        AUGMENTS,
    )
    init: str = _field("xavier", "weight init (d2l: xavier); kaiming suits ReLU networks", tuple(INITS))
    seed: int = _field(0, "seeds the initialisation, dropout and the data order (default 0)")
    device: str = _field("auto", "auto picks cuda, then mps, then cpu (default auto)", DEVICES)
    precision: str = _field(
        "fp32", "fp32 (the seed's), bf16 (autocast), or auto: bf16 where the device computes it natively", PRECISIONS
    )
    checkpoint_every: int = _field(0, "also write a checkpoint every N steps (default 0: after each epoch only)")
    train_limit: int = _field(0, "train on N training images only, drawn from every class in proportion (0: all)")
    test_limit: int = _field(0, "test on N test images only, drawn from every class in proportion (0: all)")
    val_split: int = _field(0, "hold out N training images (the same images for every seed) as a validation set")
    sync_bn: bool = _field(
        False, "nin-bn under torchrun: BatchNorm statistics over the whole global batch (SyncBatchNorm)"
    )

    def __post_init__(self) -> None:
        check(self)
        if self.stream and self.dataset != "folder":
            raise NinError(f"stream reads image folders (--dataset folder), not {self.dataset}")
        if self.sync_bn and self.arch != "nin-bn":
            raise NinError(f"sync_bn normalises BatchNorm layers; the {self.arch} network has none (use --arch nin-bn)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def field_types(cls: type = Config) -> dict[str, tuple[type, bool]]:
    """Each field of the dataclass `cls`: (its type, whether it may be None), from the type hints."""
    hints = typing.get_type_hints(cls)
    types = {}
    for f in dataclasses.fields(cls):
        kind, args = hints[f.name], typing.get_args(hints[f.name])
        optional = type(None) in args
        if optional:
            (kind,) = (a for a in args if a is not type(None))
        types[f.name] = (kind, optional)
    return types


def _fits(value: object, kind: type, optional: bool) -> bool:
    if value is None:
        return optional
    if kind is bool or isinstance(value, bool):  # a bool is an int to Python, never to a config
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def presets() -> list[str]:
    """The bundled presets' names (src/nin/presets/*.toml).

    >>> nin.presets()
    ['best', 'd2l', 'fast', 'mnist', 'quick']
    """
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_preset(name: str) -> Config:
    """A bundled preset's settings.

    >>> nin.load_preset("fast").epochs
    4
    """
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise NinError(f"unknown preset {name!r}; choose from {', '.join(presets())}")
    return load_config(path)


def load_config(path: Path) -> Config:
    """A config file: TOML (like the presets) or JSON (like a run's config.json); unset fields keep defaults."""
    path = Path(path)
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as e:
        raise NinError(f"cannot read config file {path}: {e.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise NinError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    return from_dict(values, source=str(path))


def from_dict(values: object, source: str = "config", cls: type = Config) -> typing.Any:
    """An instance of the dataclass `cls` (default `Config`) from a table of settings, each checked
    against its field's type; an int is accepted for a float field (and stored as a float)."""
    if not isinstance(values, dict):
        raise NinError(f"{source}: expected a table of settings (key = value), got {type(values).__name__}")
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise NinError(f"{source}: unknown setting(s) {', '.join(map(repr, unknown))}; valid: {', '.join(types)}")
    for name, value in values.items():
        kind, optional = types[name]
        if not _fits(value, kind, optional):
            expected = kind.__name__ + (" or None" if optional else "")
            raise NinError(f"{source}: {name} should be {expected}, got {value!r}")
    try:
        return cls(**{k: float(v) if types[k][0] is float and v is not None else v for k, v in values.items()})
    except NinError as e:  # a value out of range: say where it came from
        raise NinError(f"{source}: {e}") from None


@dataclass(frozen=True)
class Recipe:
    """`nin compare`'s shared training budget and recipe (defaults: the quick preset's optimizer); its flags
    and checks are `Config`'s for the fields of the same name."""

    budget: int = _field(30_000, "training images per model (default 30,000)")
    resize: int = _field(99, "input side length (default 99: the smallest at which NiN's class maps are 2x2)")
    batch_size: int = _field(128, "examples per SGD step (default 128)")
    lr: float = _field(0.01, "SGD learning rate (default 0.01)")
    momentum: float = _field(0.9, "SGD momentum (default 0.9)")
    seed: int = _same("seed")
    dataset: str = _same("dataset")
    image_size: int = _same("image_size")
    test_limit: int = _same("test_limit")
    device: str = _same("device")
    precision: str = _field("auto", FIELDS["precision"].metadata["help"] + " (default auto)", PRECISIONS)

    def __post_init__(self) -> None:
        check(self)


# field name -> (is the value valid, what it must be): one rule per setting, for every dataclass with that field
RULES = {
    **{name: (lambda v: v >= 1, "must be at least 1") for name in ("resize", "epochs", "batch_size", "image_size",
                                                                     "width", "budget")},
    **{name: (lambda v: v >= 0, "must be 0 (off/all) or positive") for name in ("train_limit", "test_limit",
                                                                                   "checkpoint_every", "val_split",
                                                                                   "workers")},
    "lr": (lambda v: v > 0, "must be positive"),
    "memory_budget": (lambda v: v > 0, "must be positive (GB)"),
    "dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "warmup": (lambda v: 0 <= v <= 1, "must be a share of the steps in [0, 1]"),
    "seed": (lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
    "weight_decay": (lambda v: v >= 0, "must be 0 or positive"),
}  # fmt: skip
LIMITS = {"resize": MAX_RESIZE, "image_size": MAX_RESIZE}  # larger only costs memory (it grows with the square)


def check(settings: object) -> None:
    """One `NinError` for the first invalid field of the dataclass `settings` (`Config` or `Recipe`)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):  # inf passes the '> 0' rules: lr = inf
            raise NinError(f"{f.name} must be a finite number, got {value}")
        ok, must = RULES.get(f.name, (None, ""))
        if ok is not None and not ok(value):
            raise NinError(f"{f.name} {must}, got {value}")
        if f.name in LIMITS and value > LIMITS[f.name]:
            raise NinError(f"{f.name} {value} is larger than {LIMITS[f.name]}, the most nin takes")
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise NinError(f"{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
