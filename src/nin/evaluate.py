"""Evaluation of a trained run (accuracy, per-class accuracy, confusion matrix) and prediction on images."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, UnidentifiedImageError

from nin.config import Config
from nin.data import CLASS_NAMES, Batches, load_fashion_mnist, resize
from nin.errors import NinError
from nin.plots import plot_confusion
from nin.runtime import Runtime, local

Images = str | Path | Sequence[str | Path] | torch.Tensor  # image files, or uint8 images (N, 28, 28)
MAX_PIXELS = 40_000_000  # a 40-megapixel photo decodes (about 120 MB as RGB); a decompression bomb does not


def evaluate_accuracy(net: torch.nn.Module, batches: Batches, rt: Runtime | None = None) -> float:
    """Share of correctly classified examples, in eval mode (dropout off), in the runtime's precision,
    summed over all ranks."""
    rt = rt or Runtime(batches.device)
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    with torch.inference_mode(), rt.autocast():
        for x, y in batches:
            correct += (net(x).argmax(dim=1) == y).sum()
    (total,) = rt.all_sum(correct.item())
    return total / len(batches.labels)


def confusion_matrix(net: torch.nn.Module, batches: Batches, tta: bool = False) -> torch.Tensor:
    """(10, 10) counts: row = true class, column = predicted class. With `tta` (flip test-time
    augmentation) a prediction is the class of the mean probabilities of the image and its mirror image."""
    net.eval()
    n = len(CLASS_NAMES)
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


def evaluate(net: torch.nn.Module, config: Config, plot: Path, data_dir: Path | None = None, device: str = "auto",
             test_limit: int = 0, tta: bool = False) -> dict:  # fmt: skip
    """Test accuracy, per-class accuracy and confusion matrix of a trained network (`config`: how it was
    trained), with flip test-time augmentation if `tta`; the confusion matrix is drawn to `plot`. It runs
    in the run's precision on this device (bf16 autocast where the run had `--precision auto` and the
    device computes bf16), as training measured, on a copy of `net` (the caller's stays where it is)."""
    check_test_limit(test_limit)
    rt = local(device, config.precision)
    net = copy.deepcopy(net).to(rt.device, memory_format=torch.channels_last)
    images, labels = load_fashion_mnist("test", data_dir)
    if test_limit:
        images, labels = images[:test_limit], labels[:test_limit]
    with rt.autocast():
        matrix = confusion_matrix(net, Batches(images, labels, config.batch_size, config.resize, rt.device), tta)
    per_class = matrix.diag() / matrix.sum(dim=1).clamp(min=1)
    result = {
        "examples": len(labels),
        "tta": tta,
        "precision": rt.precision,
        "test_acc": matrix.diag().sum().item() / len(labels),
        "per_class_acc": dict(zip(CLASS_NAMES, per_class.tolist())),
        "confusion_matrix": matrix.tolist(),
        "confusion_png": str(plot),
    }
    plot_confusion(matrix, CLASS_NAMES, Path(plot), title=f"test accuracy {result['test_acc']:.4f}")
    return result


def load_image(path: Path | BinaryIO) -> torch.Tensor:
    """Any PNG/JPEG (a file, or a binary file object such as io.BytesIO, named in errors by its `name`
    attribute) -> (28, 28) uint8 grayscale, the format of a Fashion-MNIST image.

    Images of another size are first brought to 28x28 (bilinear, antialiased), so that they then
    go through exactly the resize the network was trained with. No inversion: Fashion-MNIST shows a
    light garment on a black background. Images over MAX_PIXELS are refused from their header, before
    they are decoded.
    """
    name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "the image")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise NinError(f"{name}: {img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,} "
                               "(a decompression bomb?); use a smaller image")  # fmt: skip
            img = img.convert("L")
            if img.size != (28, 28):
                img = img.resize((28, 28), Image.Resampling.BILINEAR)
            return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(28, 28)
    except FileNotFoundError:
        raise NinError(f"{name}: no such image file") from None
    except UnidentifiedImageError:  # its message names the file object, not the file
        raise NinError(
            f"{name}: cannot read it as an image (not a format Pillow knows); use a PNG or JPEG file"
        ) from None
    except (Image.DecompressionBombError, OSError, ValueError) as e:
        raise NinError(f"{name}: cannot read it as an image ({e}); use a PNG or JPEG file") from None


def load_images(images: Images) -> tuple[torch.Tensor, list[str]]:
    """(uint8 (N, 28, 28) images, their names): image files (one or a list, read by `load_image`) named
    by their paths, or a uint8 tensor (N, 28, 28) of Fashion-MNIST-like images named 'image 0', 'image 1', ..."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or not len(images):
            raise NinError(f"images: expected a uint8 tensor of shape (N, 28, 28), got {images.dtype} "
                           f"{tuple(images.shape)}; pass 28x28 grayscale images as uint8, or image files")  # fmt: skip
        return images, [f"image {i}" for i in range(len(images))]
    paths = [Path(images)] if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
    if not paths:
        raise NinError("no images given; pass image files (PNG or JPEG) or a uint8 tensor of shape (N, 28, 28)")
    return torch.stack([load_image(p) for p in paths]), [str(p) for p in paths]


def predict(net: torch.nn.Module, size: int, images: Images, top: int = 3) -> list[dict]:
    """Top-`top` classes with probabilities for each image (see `load_images`), resized to `size` as in training."""
    x, names = load_images(images)
    net.eval()
    with torch.inference_mode():
        probs = torch.cat([net(resize(chunk, size)).softmax(dim=1) for chunk in x.split(256)])
    values, indices = probs.topk(top, dim=1)
    return [
        {"image": name, "top": [{"class": CLASS_NAMES[i], "prob": v} for v, i in zip(vs.tolist(), ix.tolist())]}
        for name, vs, ix in zip(names, values, indices)
    ]
