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
from nin.data import Batches, Spec, resize, test_set
from nin.errors import NinError
from nin.plots import plot_confusion
from nin.runtime import Runtime, local

Images = str | Path | Sequence[str | Path] | torch.Tensor  # image files, or uint8 images (N, [C,] H, W)
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
    `plot`. The test images are those training tested on (`nin.data.test_set`). It runs
    in the run's precision on this device (bf16 autocast where the run had `--precision auto` and the
    device computes bf16), as training measured, on a copy of `net` (the caller's stays where it is)."""
    check_test_limit(test_limit)
    rt = local(device, config.precision)
    net = copy.deepcopy(net).to(rt.device, memory_format=torch.channels_last)
    data = test_set(config, spec, data_dir)
    if test_limit:
        data = data[:test_limit]
    batches = Batches(data.images, data.labels, config.batch_size, config.resize, rt.device)
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


FASHION_MNIST = Spec()


GRAYSCALE = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # Pillow's modes without colour


def load_image(path: Path | BinaryIO, spec: Spec = FASHION_MNIST) -> torch.Tensor:
    """Any PNG/JPEG (a file, or a binary file object such as io.BytesIO, named in errors by its `name`
    attribute) -> uint8 (C, H, W) in the format of the run's data (`spec`): grayscale or RGB, at its
    stored size (28x28 for Fashion-MNIST).

    Images of another size are first brought to the stored size (bilinear, antialiased), so that they
    then go through exactly the resize the network was trained with. No inversion: Fashion-MNIST shows
    a light garment on a black background. Images over MAX_PIXELS are refused from their header, before
    they are decoded.
    """
    return decode(path, spec.channels, spec.size)


def decode(path: Path | BinaryIO, channels: int | None, size: int) -> torch.Tensor:
    """One image file as uint8 (C, size, size): `channels` 1 (gray) or 3 (RGB), or None for the image's own
    (1 for a grayscale image, else 3). 16-bit grayscale is scaled to 8 bits, not clipped. One `NinError`
    that names the file for anything unreadable (see `load_image`)."""
    name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "the image")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise NinError(f"{name}: {img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,} "
                               "(a decompression bomb?); use a smaller image")  # fmt: skip
            channels = channels or (1 if img.mode in GRAYSCALE else 3)
            if img.mode.startswith("I;16"):
                img = img.point(lambda v: v / 256, "L")  # Pillow's own convert("L") would clip at 255
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            return pixels.reshape(size, size, channels).permute(2, 0, 1).contiguous()
    except FileNotFoundError:
        raise NinError(f"{name}: no such image file") from None
    except UnidentifiedImageError:  # its message names the file object, not the file
        raise NinError(
            f"{name}: cannot read it as an image (not a format Pillow knows); use a PNG or JPEG file"
        ) from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:  # SyntaxError: a broken PNG
        raise NinError(f"{name}: cannot read it as an image ({e}); use a PNG or JPEG file") from None


def load_images(images: Images, spec: Spec = FASHION_MNIST) -> tuple[torch.Tensor, list[str]]:
    """(uint8 (N, C, H, W) images, their names): image files (one or a list, read by `load_image`) named
    by their paths, or a uint8 tensor in the run's data format, (N, C, H, W) or for one channel (N, H, W),
    named 'image 0', 'image 1', ..."""
    shape = (spec.channels, spec.size, spec.size)
    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(1) if images.dim() == 3 and spec.channels == 1 else images
        if images.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != shape or not len(x):
            raise NinError(f"images: expected a uint8 tensor of shape (N, {', '.join(map(str, shape))}), got "
                           f"{images.dtype} {tuple(images.shape)}; pass images like the run's {spec.dataset} "
                           "data, or image files")  # fmt: skip
        return x, [f"image {i}" for i in range(len(x))]
    paths = [Path(images)] if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
    if not paths:
        raise NinError("no images given; pass image files (PNG or JPEG) or a uint8 tensor of images")
    return torch.stack([load_image(p, spec) for p in paths]), [str(p) for p in paths]


def predict(net: torch.nn.Module, size: int, spec: Spec, images: Images, top: int = 3) -> list[dict]:
    """Top-`top` classes with probabilities for each image (see `load_images`), resized to `size` as in training."""
    x, names = load_images(images, spec)
    net.eval()
    with torch.inference_mode():
        probs = torch.cat([net(resize(chunk, size)).softmax(dim=1) for chunk in x.split(256)])
    values, indices = probs.topk(min(top, len(spec.classes)), dim=1)
    return [
        {"image": name, "top": [{"class": spec.classes[i], "prob": v} for v, i in zip(vs.tolist(), ix.tolist())]}
        for name, vs, ix in zip(names, values, indices)
    ]
