"""A trained model in the form the PyTorch ecosystem shares weights in: a directory of three files.

- `model.safetensors`: the weights (fp32), in safetensors (no pickle: loading runs no code), with nin's
  format and version in its metadata;
- `config.json`: the model's description (nin/inference/description.py: arch, channels, classes as
  `id2label`, input size, normalisation, data, where it came from), its per-epoch metrics and run record,
  and the SHA-256 of model.safetensors, checked on every load (a damaged or swapped weights file is refused);
- `README.md`: the model card, with the YAML front matter the Hugging Face Hub reads.

It is `huggingface_hub`'s `save_pretrained` layout: with that package installed (`nin[hub]`), `hub_class()`
is NiN with `PyTorchModelHubMixin` (`save_pretrained`, `from_pretrained`, `push_to_hub`) over this form.
A plain state_dict export gets the same description beside it (NAME.json), so it loads back as what it is.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from pathlib import Path
from typing import NoReturn

import torch

from nin.config import Config, from_dict
from nin.data.idx import IDX
from nin.data.registry import shape_of
from nin.data.types import Spec
from nin.errors import NinError
from nin.inference.description import FORMAT, describe, mismatches, model_from_state
from nin.io import atomic_write_bytes, atomic_write_text
from nin.models.nin import NiN, layer_summary
from nin.models.registry import build
from nin.version import __version__

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
# the Hub's dataset ids, for the card's front matter
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "mnist": "ylecun/mnist",
                "cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100"}  # fmt: skip


def is_model_dir(path: Path) -> bool:
    """Whether `path` is a directory in this form (it holds model.safetensors)."""
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def has_description(path: Path) -> bool:
    """Whether `path` is a model directory or its model.safetensors, or a state_dict file with nin's description
    beside it (NAME.json)."""
    path = Path(path)
    if is_model_dir(path) or (path.name == WEIGHTS and is_model_dir(path.parent)):
        return True
    return path.is_file() and path.suffix != ".json" and _ours(path.with_suffix(".json"))


def _ours(config: Path) -> bool:
    try:
        return config.is_file() and json.loads(config.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save(out: Path, model: torch.nn.Module, config: Config, spec: Spec, record: dict | None, metrics: list[dict],
         extra: dict | None = None) -> Path:  # fmt: skip
    """Write the directory `out` (created; a nin model directory's three files are replaced, any other non-empty
    folder refused, its files left as they are); `extra`: more fields for config.json (shipped weights: their name
    and measured accuracy)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NinError(f"--out {out} is a file; the safetensors format writes a directory")
    if out.is_dir() and any(out.iterdir()) and not _ours(out / CONFIG):  # another library's folder: hands off
        raise NinError(f"{out} is not empty and not a nin model directory (no config.json written by nin export); "
                       "nin writes only into an empty folder or one it wrote: choose another --out")  # fmt: skip
    weights = _fp32_weights(model, out)
    from safetensors.torch import save as to_safetensors

    data = to_safetensors(weights, metadata={"format": "pt", "nin_format": FORMAT, "nin_version": __version__})
    description = _full(config, spec, weights, record, metrics, extra, data)
    atomic_write_bytes(out / WEIGHTS, data)  # the weights first: config.json's SHA-256 names them
    atomic_write_text(out / CONFIG, json.dumps(description, indent=2) + "\n")
    atomic_write_text(out / CARD, model_card(description, model))
    return out


def save_state_dict(path: Path, model: torch.nn.Module, config: Config, spec: Spec, record: dict | None,
                    metrics: list[dict]) -> Path:  # fmt: skip
    """Write the plain state_dict (what the seed notebook loads) to `path`, and its description beside it
    (`path` with .json), so that `nin.load(path)` knows its network, classes and input size."""
    path, beside = Path(path), Path(path).with_suffix(".json")
    if path.suffix == ".json":
        raise NinError(f"--out {path}: a state_dict export writes its description to NAME.json beside it; "
                       "name the weights file otherwise (e.g. .pt)")  # fmt: skip
    if beside.exists() and not _ours(beside):
        raise NinError(f"{beside} exists and is not a description written by nin export; move it, or choose "
                       "another --out")  # fmt: skip
    weights = _fp32_weights(model, path)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    description = _full(config, spec, weights, record, metrics, None, buffer.getvalue())
    atomic_write_text(beside, json.dumps(description, indent=2) + "\n")
    return path


def _fp32_weights(model: torch.nn.Module, out: Path) -> dict[str, torch.Tensor]:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in weights.values()):
        raise NinError(f"{out}: the weights are not all fp32; export a model in fp32")
    return weights


def _full(config: Config, spec: Spec, weights: dict, record: dict | None, metrics: list[dict], extra: dict | None,
          data: bytes) -> dict:  # fmt: skip
    """config.json: `extra`'s fields, the description, the metrics and record, and the weights' SHA-256; no
    folder of this machine (no data_dir: a model directory is read without one; commands made portable)."""
    record = portable(record)
    return {**(extra or {}), **describe(config, spec, weights, record, metrics), "data_dir": None, "metrics": metrics,
            "record": record, "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip


def portable(record: dict | None) -> dict | None:
    """The run record with every absolute path in its commands cut to its last part (`--out /home/me/runs/fast`
    -> `--out fast`, `--data-dir=~/photos` -> `--data-dir=photos`): a model directory is for sharing."""

    def word(w: str) -> str:
        flag, eq, path = w.rpartition("=")
        return f"{flag}{eq}{Path(path).name}" if Path(path).expanduser().is_absolute() else w

    if record is None:
        return None
    return {**record, "sessions": [{**s, "command": [word(w) for w in s["command"]]} for s in record["sessions"]]}


def read_model_dir(path: Path, hint: str = "export it again") -> tuple[NiN, Config, Spec, dict]:
    """The model in the directory `path`, or in the state_dict file `path` with its description beside it:
    (the network in eval mode, on the CPU; its training config; its data's spec; config.json), after checking
    the weights against the SHA-256 in config.json and config.json against the weights. `hint`: what to do
    about a changed or damaged file."""
    path = Path(path)
    path = path.parent if path.name == WEIGHTS else path
    weights_file, config_file = (path / WEIGHTS, path / CONFIG) if path.is_dir() else (path, path.with_suffix(".json"))
    try:
        description = json.loads(config_file.read_text())
        data = weights_file.read_bytes()
    except (OSError, ValueError) as e:
        raise NinError(f"{config_file}: not a readable nin model description ({e}); {hint}") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise NinError(f"{config_file}: not a nin model description (no format '{FORMAT}'); {hint}")
    if hashlib.sha256(data).hexdigest() != description.get("sha256"):
        raise NinError(f"{weights_file}: its SHA-256 differs from the one in {config_file.name}, so the file was "
                       f"changed or damaged; {hint}")  # fmt: skip
    if weights_file.suffix == ".safetensors":
        from safetensors.torch import load as from_safetensors

        weights = from_safetensors(data)
    else:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    checked(description, weights, config_file, hint)
    state = {"model": weights, "config": description["training"], "data": {**description, "data_dir": None}}
    model, config, spec = model_from_state(state, weights_file)  # data_dir: the user's flag or the default only
    wrong = mismatches(description, describe(config, spec, weights))
    if wrong:
        raise NinError(f"{config_file}: {', '.join(wrong)} do not match the weights and training settings in it; "
                       f"it was edited: {hint}")  # fmt: skip
    return with_hub(model, description), config, spec, description


def checked(d: dict, weights: dict[str, torch.Tensor], source: Path, hint: str) -> None:
    """config.json from anywhere is data, not orders: one `NinError` for the first field nin reads that is not
    what nin writes there. The settings get a config file's checks (types, ranges, limits, known names), and
    the network they describe is built without memory (the meta device) and compared, tensor by tensor, with
    the weights, so that neither the file nor its description can make nin build something else."""

    def fail(what: str) -> NoReturn:
        raise NinError(f"{source}: {what}; {hint}")

    if not (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())):
        fail("the weights file beside it holds no state_dict (names -> tensors)")
    config = from_dict(d.get("training"), source=str(source))
    dataset = d.get("dataset")  # "unknown": a bare state_dict's data, as nin.load names it
    from_dict({k: d.get(k) for k in ("arch", "width", "image_size")} | ({} if dataset == "unknown" else
              {"dataset": dataset}), source=str(source))  # fmt: skip
    labels = d.get("id2label")
    if not (isinstance(labels, dict) and list(labels) == [str(i) for i in range(len(labels))] and labels
            and all(isinstance(v, str) for v in labels.values())):  # fmt: skip
        fail("id2label should map '0', '1', ... to class names")
    channels, classes = d.get("in_channels"), tuple(labels.values())
    if type(channels) is not int or channels < 1 or d.get("input_range") != [0.0, 1.0]:
        fail("in_channels should be a number of channels and input_range [0.0, 1.0]")
    with torch.device("meta"):
        net = build(config.arch, config.dropout, config.width, channels, len(classes), config.normalize)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        key = next(k for k in (*expected, *found) if expected.get(k) != found.get(k))
        fail(f"arch {config.arch}, width {config.width}, in_channels {channels} and num_classes {len(classes)} do "
             f"not fit the weights ({key}: {found.get(key)} in the file, {expected.get(key)} described)")  # fmt: skip
    if dataset not in ("folder", "unknown"):
        if (named := shape_of(dataset)) != (channels, len(classes)):
            fail(f"dataset {dataset} has {named[0]} channel(s) and {named[1]} classes; the weights take {channels} "
                 f"channel(s) and {len(classes)}")  # fmt: skip
        if dataset in IDX and IDX[dataset].classes != classes:
            fail(f"dataset {dataset}'s classes are not the ones in id2label")
    if not (isinstance(d.get("metrics"), list) and all(_epoch(m) for m in d["metrics"])):
        fail(f"metrics should be a list of epochs, each with {', '.join(METRICS)} (numbers)")
    record = d.get("record")
    if record is not None and not (isinstance(record, dict) and isinstance(record.get("sessions"), list)
                                   and all(_session(s) for s in record["sessions"])):  # fmt: skip
        fail(f"record should be None or a run record: sessions, each with {', '.join(SESSION)}")
    card = d.get("evaluation", {"test_acc": 0.0, "test_images": 0, "evaluated": ""})
    if not (all(isinstance(d.get(k, ""), str) for k in ("name", "description", "nin_version")) and
            isinstance(card, dict) and _number(card.get("test_acc")) and type(card.get("test_images")) is int
            and isinstance(card.get("evaluated"), str) and isinstance(d.get("source"), dict)):  # fmt: skip
        fail("name, description, nin_version, source or evaluation is not what nin export writes")


METRICS = ("epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec", "epoch_seconds")
# what nin reads of a session of the run record (nin evaluate, nin report)
SESSION = ("command", "started", "status", "epochs_before", "epochs_after", "wall_seconds", "precision",
           "world_size", "torch", "nin_version", "nin_commit")  # fmt: skip


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _epoch(m: object) -> bool:
    return isinstance(m, dict) and set(METRICS) <= set(m) <= {*METRICS, "val_acc"} and all(map(_number, m.values()))


def _session(s: object) -> bool:
    return (isinstance(s, dict) and set(SESSION) <= set(s)
            and all(v is None or type(v) in (str, int, float, bool) for k, v in s.items() if k != "command")
            and isinstance(s["command"], list) and all(isinstance(w, str) for w in s["command"])
            and (s["wall_seconds"] is None or _number(s["wall_seconds"])))  # fmt: skip


def model_card(description: dict, model: torch.nn.Module) -> str:
    """README.md: the YAML front matter the Hub reads, then what the model is, how it was trained, how well it
    does, what it is for and not for, and how to load it."""
    d, source = description, description["source"]
    c, h, w = d["input_size"]
    rows = layer_summary(model, h, c)
    params, macs = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
    measured = d.get("evaluation")
    accuracy = (f"{measured['test_acc']:.4f} on all {measured['test_images']:,} test images ({measured['evaluated']})"
                if measured else f"{source['test_acc']:.4f} (the last epoch's, as training measured it)"
                if source["test_acc"] is not None else "not measured")  # fmt: skip
    front = ["---", "library_name: nin", "license: mit", "pipeline_tag: image-classification"]
    front += ["datasets:", f"- {HUB_DATASETS[d['dataset']]}"] if d["dataset"] in HUB_DATASETS else []
    front += ["metrics:", "- accuracy", "tags:", "- image-classification", "- network-in-network", "- pytorch",
              "- safetensors", "---"]  # fmt: skip
    classes = ", ".join(d["id2label"].values())
    network = d["arch"] + (f", width {d['width']}" if d["arch"] == "nin-bn" else "")
    inside = f"; normalised inside the network by mean {d['mean']}, std {d['std']}" if d["mean"] else ""
    command = " ".join(source["command"] or ["?"])
    sessions = (d.get("record") or {}).get("sessions") or [d["training"]]
    ran = " then ".join(dict.fromkeys(s["precision"] for s in sessions))  # the run record's: what the device ran
    provenance = f"nin commit {source['nin_commit']}, on {source['machine']}"
    name = d.get("name", "this model")
    text = f"""
# {d.get("name", f"nin {d['arch']}")}: Network in Network on {d["dataset"]}

{d.get("description", f"A {d['arch']} network trained by nin (d2l's Network in Network chapter).")}

| | |
|---|---|
| test accuracy | {accuracy} |
| network | {network}: {params:,} parameters, {macs:,} MACs per image |
| input | float images (N, {c}, {h}, {w}) in [0, 1] (pixel / 255){inside} |
| classes | {d["num_classes"]}: {classes[:400]}{"..." if len(classes) > 400 else ""} |
| trained by | `{command}` (seed {source["seed"]}, trained in {ran}), {provenance} |

## How it was trained

With nin {d["nin_version"]}: {", ".join(f"{k}={v}" for k, v in d["training"].items())}.

## Intended use and limits

A reference model for learning and for testing tools: it classifies {d["dataset"]}-like images (one object,
centred, {d["image_size"]}x{d["image_size"]} as stored) into these classes only. Other images get one of them
anyway, with no "none of these" answer; its accuracy is that of the test set above, not of images from elsewhere.

## How to load it

```python
import nin

run = nin.from_pretrained("{name}")  # a directory like this one, or the name of weights that ship with nin
run.predict(["image.png"])  # top classes; run.model is the nn.Module, in eval mode
```

`nin predict DIR image.png` does the same from the command line. The weights alone:
`safetensors.torch.load_file("model.safetensors")` (the same keys as `nin.build_model`'s network).
"""
    return "\n".join(front) + "\n" + text


@functools.cache
def hub_class() -> type | None:
    """NiN with huggingface_hub's `PyTorchModelHubMixin`, made on first use; None without huggingface_hub."""
    try:
        from huggingface_hub import PyTorchModelHubMixin
    except ImportError:
        return None

    class PretrainedNiN(NiN, PyTorchModelHubMixin, library_name="nin", license="mit",
                        pipeline_tag="image-classification", tags=["network-in-network"]):  # fmt: skip
        """A trained NiN that knows its description (`config`: config.json's fields): `save_pretrained(DIR)`
        and `push_to_hub(REPO)` write nin's directory form, `from_pretrained(DIR_OR_REPO)` reads it."""

        def __init__(self, config: dict):
            spec, settings = Spec.from_dict(config), config["training"]
            net = build(settings["arch"], settings["dropout"], settings["width"], spec.channels, len(spec.classes),
                        settings["normalize"])  # fmt: skip
            super().__init__(layers=list(net))
            knowing(self, config)

        def _save_pretrained(self, save_directory: Path) -> None:
            d = self.config
            card = {k: d[k] for k in ("name", "description", "evaluation") if k in d}
            save(save_directory, self, from_dict(d["training"]), Spec.from_dict(d), d.get("record"),
                 d.get("metrics") or [], card)  # fmt: skip

        @classmethod
        def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                             force_download: bool, local_files_only: bool, token: str | bool | None,
                             **kwargs: object) -> NiN:  # fmt: skip
            path = Path(model_id)
            if not path.is_dir():
                path = fetch_from_hub(model_id, revision=revision, cache_dir=cache_dir, token=token,
                             force_download=force_download, local_files_only=local_files_only)  # fmt: skip
            return read_model_dir(path)[0]

    PretrainedNiN.__qualname__ = PretrainedNiN.__name__  # made here, named as if at module level
    return PretrainedNiN


def fetch_from_hub(repo_id: str, **options: object) -> Path:
    """The Hugging Face Hub repository `repo_id`'s three files, downloaded into the Hub's cache (`options`:
    `snapshot_download`'s); needs huggingface_hub."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NinError(f"{repo_id}: loading from the Hugging Face Hub needs huggingface_hub: pip install "
                       "'nin[hub]'") from None  # fmt: skip
    return Path(snapshot_download(repo_id, allow_patterns=[WEIGHTS, CONFIG, CARD], **options))


def with_hub(model: NiN, description: dict) -> NiN:
    """`model` as a `hub_class()` network (the same weights, in eval mode) where huggingface_hub is installed, else
    as it is; either way knowing its description (`knowing`), so that what a loader returns has the same
    attributes whatever is installed."""
    cls = hub_class()
    if cls is None:
        return knowing(model, description)
    hub = cls(description)
    hub.load_state_dict(model.state_dict())
    return hub.eval()


def knowing(model: NiN, description: dict) -> NiN:
    """`model` with its description as attributes: `config` (config.json's fields: input range, mean and std,
    data, where it came from), `classes` (the names of its outputs) and `input_size` (C, H, W)."""
    model.config, model.classes = description, Spec.from_dict(description).classes
    model.input_size = tuple(description["input_size"])
    return model
