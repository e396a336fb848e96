"""Evaluation of a trained run (accuracy, per-class accuracy, confusion matrix) and prediction on images."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from nin.config import Config
from nin.data.batches import Batches
from nin.data.preprocess import Images, Preprocess, to_inputs
from nin.data.stream import batches_of
from nin.data.subsets import limit, test_set
from nin.data.types import Spec
from nin.errors import NinError
from nin.plots import plot_confusion
from nin.runtime import local


def confusion_matrix(net: torch.nn.Module, batches: Batches, n: int, tta: bool = False) -> torch.Tensor:
    """(n, n) counts of `n` classes: row = true class, column = predicted class. With `tta` (flip test-time
    augmentation) a prediction is the class of the mean probabilities of the image and its mirror image."""
    net.eval()
    matrix = torch.zeros(n * n, dtype=torch.long, device=batches.device)
    with torch.inference_mode():
        for x, y in batches:
            probs = net(x).softmax(dim=1)
            if tta:
                probs += net(x.flip(3)).softmax(dim=1)
            matrix += torch.bincount(y * n + probs.argmax(dim=1), minlength=n * n)
    return matrix.reshape(n, n).cpu()


def check_test_limit(test_limit: int) -> None:
    if test_limit < 0:
        raise NinError(f"--test-limit must be 0 (all) or positive, got {test_limit}")


def evaluate(net: torch.nn.Module, config: Config, spec: Spec, plot: Path, data_dir: Path | None = None,
             device: str = "auto", test_limit: int = 0, tta: bool = False) -> dict:  # fmt: skip
    """Test accuracy, per-class accuracy and confusion matrix of a trained network (`config`: how it was
    trained; `spec`: on what), with flip test-time augmentation if `tta`; the confusion matrix is drawn to
    `plot`. The test images are those training tested on (`nin.data.test_set`: a streamed run's are streamed,
    decoded in worker processes), `test_limit` of them drawn from every class as training draws them. It runs
    in the run's precision on this device (bf16 autocast where the run had `--precision auto` and the
    device computes bf16), as training measured, on a copy of `net` (the caller's stays where it is)."""
    check_test_limit(test_limit)
    rt = local(device, config.precision)
    net = copy.deepcopy(net).to(rt.device, memory_format=torch.channels_last)
    data = limit(test_set(config, spec, data_dir), test_limit)
    batches = batches_of(data, config.batch_size, config.resize, rt.device)
    with rt.autocast():
        matrix = confusion_matrix(net, batches, len(spec.classes), tta)
    counts = matrix.sum(dim=1)
    per_class = matrix.diag() / counts.clamp(min=1)
    result = {
        "dataset": spec.dataset,
        "examples": len(data),
        "tta": tta,
        "precision": rt.precision,
        "test_acc": matrix.diag().sum().item() / len(data),
        # a class without test images (a folder's test/ may lack some) has no accuracy to report
        "per_class_acc": {c: a for c, a, n in zip(spec.classes, per_class.tolist(), counts.tolist()) if n},
        "confusion_matrix": matrix.tolist(),
        "confusion_png": str(plot),
    }
    plot_confusion(matrix, spec.classes, Path(plot), title=f"test accuracy {result['test_acc']:.4f}")
    return result


def predict(net: torch.nn.Module, preprocess: Preprocess, classes: tuple[str, ...], images: Images,
            top: int = 3) -> list[dict]:  # fmt: skip
    """Top-`top` of `classes` with probabilities for each image (files or stored images), through the network's
    `preprocess`ing, as training's held-out images went."""
    x, names = preprocess.stored_images(images)
    probs = logits(net, x, preprocess.size).softmax(dim=1)
    values, indices = probs.topk(min(top, len(classes)), dim=1)
    return [
        {"image": name, "top": [{"class": classes[i], "prob": v} for v, i in zip(vs.tolist(), ix.tolist())]}
        for name, vs, ix in zip(names, values, indices)
    ]


def logits(net: torch.nn.Module, images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """The network's scores (N, classes) for uint8 stored `images` (N, C, H, W) brought to `size` by the
    preprocessing's step 2, in eval mode, `chunk` images at a time: memory stays that of one chunk."""
    net.eval()
    with torch.inference_mode():
        return torch.cat([net(to_inputs(part, size)) for part in images.split(chunk)])
