"""nin from Python: train a preset into a run directory, load a run, and ask the run questions.

The `nin` command is built on these functions (`nin train` calls `train`; `nin evaluate`, `predict`, `cam`
and `report` call `load` and the `Run` method of the same name), so a run trained from Python is the run
`nin train` makes with the same settings, weight for weight. docs/api.md documents them all.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from nin.config import Config, from_dict, load_config, load_preset
from nin.data.preprocess import Images, Preprocess
from nin.data.types import Spec
from nin.errors import NinError
from nin.inference.cam import cam as draw_class_maps
from nin.inference.description import model_from_state
from nin.inference.evaluate import evaluate as evaluate_model
from nin.inference.evaluate import predict as predict_images
from nin.inference.pretrained import WEIGHTS, fetch_from_hub, has_description, read_model_dir, save, save_state_dict
from nin.inference.shipped import names as shipped_names
from nin.inference.shipped import path_of as shipped_path
from nin.inference.shipped import read_shipped
from nin.models.nin import NiN, layer_summary
from nin.models.registry import MODELS, smallest_input
from nin.report.page import report as write_report
from nin.runtime import is_main_process
from nin.training.checkpoint import load_checkpoint, read_model_state
from nin.training.loop import train as train_loop
from nin.training.rundir import FILES, RunDir, new_run_path

DEFAULT_PRESET = "fast"
FORMATS = ("state-dict", "safetensors", "onnx")


@dataclass(eq=False, repr=False)
class Run:
    """A trained run, as `nin.train` returns it and `nin.load` reads it: its directory (`path`), checkpoint
    file, `config`, per-epoch `metrics`, final `test_acc`, the trained `model` (in eval mode, on the CPU), the
    run `record` (run.json: how the run was made; None without one) and its data's `spec` (dataset, class
    names, channels, image size). Shipped weights (`nin.load_weights`) also have their model `card`; their
    outputs go to the current directory, never into the installed package.

    >>> run = nin.load("runs/fast")
    >>> run.test_acc, run.config.epochs, len(run.metrics)
    (0.921, 4, 4)
    """

    path: Path
    checkpoint: Path
    config: Config
    model: NiN
    metrics: list[dict]
    record: dict | None
    spec: Spec
    card: dict | None = None  # the model card of shipped weights (their config.json); None for a run

    def __repr__(self) -> str:
        acc = "no epoch yet" if self.test_acc is None else f"test acc {self.test_acc:.4f}"
        c = self.config
        return (f"Run('{self.path}': {c.arch} on {self.spec.dataset} at {c.resize}x{c.resize}, "
                f"{len(self.metrics)} of {c.epochs} epochs, {acc})")  # fmt: skip

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in the order of the network's outputs.

        >>> nin.load("runs/fast").classes[:3]
        ('T-shirt/top', 'Trouser', 'Pullover')
        """
        return self.spec.classes

    @property
    def preprocess(self) -> Preprocess:
        """How an image becomes this network's input (nin/data/preprocess.py); calling it does it.

        >>> nin.load("runs/fast").preprocess(["shirt.png"]).shape
        torch.Size([1, 1, 28, 28])
        """
        return self.spec.preprocess(self.config.resize)

    @property
    def test_acc(self) -> float | None:
        """The last epoch's test accuracy (None if the checkpoint was taken before the first epoch ended).

        >>> nin.load("runs/fast").test_acc
        0.921
        """
        return self.metrics[-1]["test_acc"] if self.metrics else None

    def _file(self, key: str) -> Path:
        """Where an output goes by default: into the run directory; for shipped weights, NAME-FILE in the
        current directory (e.g. fast-cam.png), since the package's folder may not be writable or ours to fill."""
        if self.card is None:
            return RunDir(self.path).file(key)
        return Path(f"{self.card['name']}-{FILES[key][0]}")

    def evaluate(self, data_dir: str | Path | None = None, device: str = "auto", test_limit: int = 0,
                 tta: bool = False, plot: str | Path | None = None) -> dict:  # fmt: skip
        """Test accuracy, per-class accuracy and confusion matrix, as `nin evaluate --json` prints them, in
        the run's precision on `device` (shipped weights: fp32, as their card's accuracy was measured); with
        `tta`, averaged over each image and its mirror image. The confusion matrix is drawn to `plot` (default:
        confusion_matrix.png in the run directory).

        >>> result = run.evaluate(test_limit=1000)
        >>> result["test_acc"], result["per_class_acc"]["Shirt"]
        (0.918, 0.72)
        """
        png = Path(plot) if plot else self._file("confusion")
        config = self.config if self.card is None else dataclasses.replace(self.config, precision="fp32")
        result = evaluate_model(self.model, config, self.spec, png, data_dir, device, test_limit, tta)
        return {"checkpoint": str(self.checkpoint), **result, "record": self.record}

    def predict(self, images: Images, top: int = 3) -> list[dict]:
        """The `top` classes with probabilities for each image: image files (PNG, JPEG, BMP or WebP, any size,
        through the run's `preprocess`ing: 28x28 grayscale for Fashion-MNIST) or a uint8 tensor like the run's
        stored data, (N, C, H, W), or (N, H, W) for grayscale.

        >>> run.predict(["shirt.png"])
        [{'image': 'shirt.png', 'top': [{'class': 'Shirt', 'prob': 0.81}, ...]}]
        >>> images, labels = nin.load_fashion_mnist("test")
        >>> run.predict(images[:2], top=1)
        [{'image': 'image 0', 'top': [{'class': 'Ankle boot', 'prob': 0.99}]}, ...]
        """
        return predict_images(self.model, self.preprocess, self.classes, images, top)

    def cam(self, images: Images | None = None, test_samples: int = 0, data_dir: str | Path | None = None,
            out: str | Path | None = None) -> dict:  # fmt: skip
        """Class activation maps (the class maps NiN's global average pooling turns into scores) of `images`
        (as for `predict`), or of `test_samples` test images drawn from every class, drawn into a PNG grid `out`
        (default: cam.png in the run directory); with each image's prediction.

        >>> result = run.cam(test_samples=8)
        >>> result["png"], result["images"][0]
        ('runs/fast/cam.png', {'image': 'test image 0', 'predicted': 'Ankle boot', 'prob': 0.99, ...})
        """
        png = Path(out) if out else self._file("cam")
        rows = draw_class_maps(self.model, self.config, self.spec, self.checkpoint, png, images, test_samples,
                               data_dir)  # fmt: skip
        return {"checkpoint": str(self.checkpoint), "png": str(png), "images": rows}

    def report(self, data_dir: str | Path | None = None, device: str = "auto", test_limit: int = 0,
               out: str | Path | None = None) -> Path:  # fmt: skip
        """Write the run's self-contained HTML page (default: report.html in the run directory); returns its path.

        >>> run.report()
        PosixPath('runs/fast/report.html')
        """
        return write_report(self, Path(out) if out else self._file("report"), data_dir, device, test_limit)

    def export(self, out: str | Path | None = None, format: str = "state-dict", quantize: str | None = None,
               data_dir: str | Path | None = None) -> Path:  # fmt: skip
        """Write the trained network out; returns the path written. `state-dict`: the weights as a plain
        state_dict (default: weights.pt in the run directory), which the seed notebook loads into its own
        `nn.Sequential` with `net.load_state_dict(torch.load(path))`, with its description beside it
        (weights.json), so that `nin.load` knows its network and classes. `safetensors`: the directory `out`
        with model.safetensors, config.json and README.md (the model card), which `nin.from_pretrained` and
        the Hugging Face Hub read. `onnx`: an ONNX model for onnxruntime (default: model.onnx), float32
        (N, C, H, W) images in [0, 1] in, logits out; with `quantize="int8"`, statically quantized to int8,
        calibrated on training images (from `data_dir`, else where the run found them; default model-int8.onnx).

        >>> run.export("nin.pt")
        PosixPath('nin.pt')
        >>> run.export("nin-fast", format="safetensors")
        PosixPath('nin-fast')
        >>> run.export("nin.onnx", format="onnx", quantize="int8")
        PosixPath('nin.onnx')
        """
        if format not in FORMATS:
            raise NinError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
        if quantize not in (None, "int8") or (quantize and format != "onnx"):
            raise NinError(f"--quantize {quantize}: int8 is the one quantization, for --format onnx")
        if format == "safetensors":
            if out is None:
                raise NinError("--format safetensors writes a directory: give it with --out DIR")
            card = {k: self.card[k] for k in ("name", "description", "evaluation")} if self.card else None
            return save(Path(out), self.model, self.config, self.spec, self.record, self.metrics, card)
        if format == "state-dict":
            path = Path(out) if out else self._file("weights")
            return save_state_dict(path, self.model, self.config, self.spec, self.record, self.metrics)
        from nin.inference.export import to_onnx  # the ONNX packages: only when asked for

        path = Path(out) if out else self._file("onnx_int8" if quantize else "onnx")
        return to_onnx(self.model, self.config, self.spec, path, self.record, self.metrics, quantize, data_dir)

    def summary(self) -> list[dict]:
        """The trained network layer by layer at its input size: name, output shape, parameters, MACs.

        >>> [row["output_shape"] for row in run.summary()][-1]
        (1, 10)
        """
        return layer_summary(self.model, self.config.resize, self.spec.channels)


def load(path: str | Path, resize: int | None = None, dataset: str | None = None) -> Run:
    """The run in a run directory, or in one checkpoint file: read with `weights_only=True`, checked
    against its SHA-256; or the model in a directory written by `nin export --format safetensors` (or a
    state_dict file with its description beside it, as `nin export` writes them). A bare state_dict of the
    seed's `nn.Sequential` (the notebook's `torch.save(net.state_dict(), "nin.pt")`) loads too, as the d2l
    preset's network at `resize` (default 224) on `dataset`'s data (default: Fashion-MNIST, said on stderr).

    >>> run = nin.load("runs/fast")
    >>> run.model(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 10])
    >>> seed = nin.load("nin.pt", resize=224)  # the seed notebook's own weights
    """
    path = Path(path)
    if has_description(path):
        for flag, value in (("--resize", resize), ("--dataset", dataset)):
            if value is not None:
                raise NinError(f"{flag} {value}: {path} comes with its description, which says its input size "
                               f"and data; {flag} is for a bare state_dict")  # fmt: skip
        model, config, spec, described = read_model_dir(path)
        folder = path if path.is_dir() else path.parent
        weights = folder / WEIGHTS if folder == path or path.name == WEIGHTS else path
        return Run(folder, weights, config, model, described["metrics"], described["record"], spec)
    run, checkpoint = RunDir.of(path)
    state = read_model_state(checkpoint, resize, dataset)
    if "note" in state:  # a bare state_dict: what was assumed about it, in one line
        print(f"nin: note: {state['note']}", file=sys.stderr)
    model, config, spec = model_from_state(state, checkpoint)
    record = run.record() if checkpoint == run.file("checkpoint") else None  # another file: not this run's record
    return Run(run.path, checkpoint, config, model, state["metrics"], record, spec)


def load_weights(name: str) -> Run:
    """The trained weights `name` that ship with nin (`nin weights` lists them) as a `Run`: its `model` in eval
    mode, on the CPU, and its model `card`; the weights file is checked against the SHA-256 on the card.

    >>> run = nin.load_weights("fast")
    >>> run.card["evaluation"]["test_acc"], run.model.training
    (0.9209, False)
    >>> images, labels = nin.load_fashion_mnist("test")
    >>> run.predict(images[:1], top=1)[0]["top"][0]["class"]
    'Ankle boot'
    """
    model, config, spec, card = read_shipped(name)
    path = shipped_path(name)
    return Run(path, path / WEIGHTS, config, model, card["metrics"], card["record"], spec, card=card)


def from_pretrained(name_or_dir: str | os.PathLike) -> Run:
    """A trained model by where it is: a directory written by `nin export --format safetensors` (or
    `save_pretrained`), anything else `nin.load` reads, the name of weights that ship with nin, or, with
    huggingface_hub installed (`pip install 'nin[hub]'`), a Hugging Face Hub repository `user/name`
    (downloaded into the Hub's cache). Its `model` is in eval mode; `classes` and `config.resize` say what
    it takes and names. A local path wins over a shipped name; a local directory never touches the network.

    >>> run = nin.from_pretrained("mnist-fast")
    >>> run.classes[:3], run.config.resize
    (('0', '1', '2'), 28)
    """
    path = Path(name_or_dir)
    if path.exists():
        return load(path)
    if str(name_or_dir) in shipped_names():
        return load_weights(str(name_or_dir))
    if str(name_or_dir).count("/") == 1 and not str(name_or_dir).startswith((".", "/")):
        return load(fetch_from_hub(str(name_or_dir)))
    raise NinError(f"{name_or_dir}: no such file or directory, and not the name of shipped weights "
                   f"({', '.join(shipped_names())}) or a Hub repository (user/name)")  # fmt: skip


def train(preset: str | os.PathLike | Config | None = None, out: str | Path | None = None,
          data_dir: str | Path | None = None, resume: str | Path | None = None, force: bool = False,
          auto_resume: bool = False, **settings: object) -> Run | None:  # fmt: skip
    """Train a preset (by name, default fast), a TOML or JSON config file (a Path) or a `Config`, with
    `settings` on top as `nin train`'s flags put them, into the run directory `out` (default
    runs/<preset>-<date>-<time>; with `force`, the run in it is replaced); or continue the interrupted run
    in the directory `resume`; with `auto_resume`, continue the run with these settings in `out` (a
    finished one is only completed), or start it there if `out` holds none (what torchrun's restarts
    need). Returns the trained run (under torchrun, on rank 0; the other ranks get None).

    >>> run = nin.train("fast", out="runs/fast", epochs=2, seed=1)
    >>> run = nin.train(nin.load_preset("d2l"), train_limit=10_000, epochs=1)
    >>> run = nin.train(resume="runs/fast")
    >>> run = nin.train("fast", out="runs/fast-ddp", auto_resume=True)
    """
    if auto_resume and (resume is not None or force):
        raise NinError("--auto-resume decides by itself whether to continue; drop --resume / --force")
    if auto_resume and out is None:
        raise NinError("--auto-resume needs --out: the run directory to continue or start")
    if resume is not None:
        config, remembered = _resumed_config(Path(resume), preset, out, force, settings)
        out, data_dir = Path(resume), data_dir or remembered
    else:
        config, name = configure(preset, **settings)
        out = Path(out) if out is not None else new_run_path(name)
    train_loop(config, out, Path(data_dir) if data_dir else None, resume=resume is not None, force=force,
               auto_resume=auto_resume)  # fmt: skip
    if not is_main_process():
        return None  # rank 0 alone writes the run; it may still be writing its last checkpoint
    return load(out)


def configure(preset: str | os.PathLike | Config | None = None, **settings: object) -> tuple[Config, str]:
    """The settings of a new run, printed in one line as `nin train` shows them, and its name: a preset's
    (by name; default fast), a TOML or JSON config file's (a Path), or a `Config`; then `settings` on top,
    each checked as in a config file. The name (the preset's, the file's stem) names the default run directory.

    >>> config, name = configure("quick", epochs=1)
    preset quick: arch=nin, width=64, resize=67, ...
    """
    if isinstance(preset, Config):
        base, name, source = preset, "config", "config"
    elif isinstance(preset, os.PathLike):
        base, name, source = load_config(Path(preset)), Path(preset).stem, f"config {preset}"
    else:
        name = preset or DEFAULT_PRESET
        base, source = load_preset(name), f"preset {name}"
    config = from_dict({**base.to_dict(), **settings}, source="settings")
    if is_main_process():  # under torchrun, rank 0 alone prints
        print(f"{source}: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    return config, name


def _resumed_config(run_dir: Path, preset: object, out: object, force: bool,
                    settings: dict) -> tuple[Config, str | None]:  # fmt: skip
    """The run's own config (only the device may change), and the data folder a folder run remembers."""
    given = [f"--{k.replace('_', '-')}" for k in settings if k != "device"]
    given += [flag for flag, value in (("--preset" if isinstance(preset, str) else "--config", preset),
                                       ("--out", out), ("--force", force)) if value]  # fmt: skip
    if given:
        raise NinError(f"--resume continues a run with its own settings; drop {', '.join(given)}")
    if not run_dir.is_dir():
        raise NinError(f"--resume {run_dir}: not a run directory (it should hold a checkpoint.pt)")
    _, checkpoint = RunDir.of(run_dir)
    state = load_checkpoint(checkpoint)
    config = from_dict(state["config"], source=str(checkpoint))
    config = from_dict({**config.to_dict(), "device": settings.get("device", config.device)}, source="settings")
    return config, Spec.from_dict(state.get("data"), checkpoint).data_dir


def build_model(name: str = "nin", resize: int = 224) -> nn.Module:
    """A network by name, untrained: the seed's NiN (`nin`), d2l's NiN exercises (`nin-1conv`, `nin-3conv`,
    `nin-3x3`, `nin-fc`) and the classic CNNs NiN replaces (`lenet`, `alexnet`, `vgg11`: d2l's, channels / 4
    as d2l trains it), with any dense head sized for `resize` x `resize` input: the models `nin compare` trains.

    >>> net = nin.build_model("alexnet", resize=224)
    >>> sum(p.numel() for p in net.parameters())
    46764746
    """
    if name not in MODELS:
        raise NinError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if resize < (smallest := smallest_input(name)):
        raise NinError(f"resize {resize} is too small for {name}; it needs at least {smallest}")
    return MODELS[name][1](resize)
