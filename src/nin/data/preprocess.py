"""How an image becomes the network's input: one description (`Preprocess`), carried by every form a model takes
(a run's checkpoint, a model directory's config.json, ONNX metadata, the shipped weights), applied by one
function (`Preprocess.__call__`) wherever an image becomes a tensor: training's held-out passes, evaluate,
predict, cam, report, serve, int8 calibration.

Two steps, as training runs them (torchvision's weights carry the same facts as `transforms()`: resize size,
crop size, interpolation; timm's as `pretrained_cfg`):

1. `prepare`: a file is decoded (`images.open_image`: EXIF orientation, alpha over black, 16-bit scaled, JPEGs
   decoded at a reduced scale no smaller than needed), brought to the run's channels (gray as ITU-R 601-2 luma),
   and made a uint8 `stored` x `stored` image: `squash` (the whole image, as d2l's `Resize((s, s))`; IDX, CIFAR and
   folders in memory) or `center` (the central square, `stored` of every `resize_size` pixels of the shorter side:
   torchvision's `Resize(resize_size)` + `CenterCrop(stored)` in one resampling; streamed folders). Bilinear,
   antialiased (Pillow).
2. `to_inputs`: a batch of stored images becomes float in [0, 1] at `size` x `size` on the device (bilinear,
   antialiased, rounded as Pillow rounds uint8: d2l's `Resize` + `ToTensor` for 256 images at once).

IDX and CIFAR images come stored (28 or 32 pixels) and take step 2 alone; a file given to predict takes both.
A `--normalize` network holds its mean and std as its first layer, in every form: inputs stay in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from PIL import Image

from nin.data.images import SUPPORTED, open_image
from nin.errors import NinError

# image files (paths or binary file objects), or uint8 stored images (N, [C,] H, W)
Images = str | Path | Sequence[str | Path | BinaryIO] | torch.Tensor
CROPS = ("squash", "center")
CENTER = 8 / 7  # `center`: the shorter side resized to stored * 8/7, the centre stored x stored kept (256 -> 224)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the input of one network: `channels` (1 gray, 3 RGB), step 1 to a uint8 `stored` x
    `stored` image by `crop` ('squash' or 'center'), step 2 to float `size` x `size` (see the module's doc)."""

    channels: int = 1
    stored: int = 28
    size: int = 28
    crop: str = "squash"

    @property
    def resize_size(self) -> int:
        """The side (squash: both sides; center: the shorter side) an image is resized to before any crop."""
        return round(self.stored * CENTER) if self.crop == "center" else self.stored

    def __call__(self, images: Images) -> torch.Tensor:
        """Image files (paths or binary file objects) or uint8 stored images -> float (N, C, size, size)."""
        return to_inputs(self.stored_images(images)[0], self.size)

    def load(self, source: str | Path | BinaryIO) -> torch.Tensor:
        """Step 1 of one image file: uint8 (C, stored, stored)."""
        return prepare(source, self.channels, self.stored, self.crop)

    def stored_images(self, images: Images) -> tuple[torch.Tensor, list[str]]:
        """(uint8 (N, C, stored, stored), names): image files (paths, or file objects named by their `name`)
        through step 1, or uint8 images already stored, (N, C, H, W) or for one channel (N, H, W), named
        'image 0', 'image 1', ..."""
        shape = (self.channels, self.stored, self.stored)
        if isinstance(images, torch.Tensor):
            x = images.unsqueeze(1) if images.dim() == 3 and self.channels == 1 else images
            if images.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != shape or not len(x):
                raise NinError(f"images: expected a uint8 tensor of shape (N, {', '.join(map(str, shape))}), got "
                               f"{images.dtype} {tuple(images.shape)}; pass images like the run's data, or image "
                               "files")  # fmt: skip
            return x, [f"image {i}" for i in range(len(x))]
        files = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not files:
            raise NinError(f"no images given; pass image files ({SUPPORTED}) or a uint8 tensor of images")
        names = [str(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", "an image")) for f in files]
        files = [Path(f) if isinstance(f, (str, os.PathLike)) else f for f in files]
        return torch.stack([self.load(f) for f in files]), names

    def to_dict(self) -> dict:
        """The description as config.json and ONNX metadata hold it (torchvision's and timm's names)."""
        return {"channels": self.channels, "crop": self.crop, "resize_size": self.resize_size,
                "stored_size": self.stored, "input_size": self.size, "interpolation": "bilinear",
                "antialias": True, "scale": "1/255"}  # fmt: skip

    @staticmethod
    def from_dict(values: dict, source: object) -> Preprocess:
        """A description written by `to_dict` (from a model directory or ONNX file named `source`), checked."""
        try:
            p = Preprocess(int(values["channels"]), int(values["stored_size"]), int(values["input_size"]),
                           str(values["crop"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise NinError(f"{source}: its preprocessing description is incomplete or malformed ({e!r})") from None
        if p.channels not in (1, 3) or p.crop not in CROPS or not (1 <= p.stored <= 4096 and 1 <= p.size <= 4096):
            raise NinError(f"{source}: its preprocessing description is out of range ({values}); it is not a model "
                           "nin can run")  # fmt: skip
        return p


def prepare(source: str | Path | BinaryIO, channels: int | None, stored: int, crop: str = "squash") -> torch.Tensor:
    """Step 1: one image file as uint8 (C, stored, stored); `channels` None keeps the image's own (1 for a
    grayscale image, else 3)."""
    img = open_image(source, draft=round(stored * CENTER) if crop == "center" else stored)
    return from_image(img, channels, stored, crop)


def from_image(img: Image.Image, channels: int | None, stored: int, crop: str = "squash") -> torch.Tensor:
    """Step 1 on a decoded image (mode L or RGB, as `open_image` gives it)."""
    channels = channels or (1 if img.mode == "L" else 3)
    mode = "L" if channels == 1 else "RGB"
    img = img if img.mode == mode else img.convert(mode)
    box = center_box(img.width, img.height, stored) if crop == "center" else None
    if img.size != (stored, stored) or box is not None:
        img = img.resize((stored, stored), Image.Resampling.BILINEAR, box=box)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.reshape(stored, stored, channels).permute(2, 0, 1).contiguous()


def center_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The centred square of a `width` x `height` image that `center` keeps: `size` of every round(size * 8/7)
    pixels of the shorter side (an image too small for the margin keeps its whole shorter side)."""
    side = min(width, height) * min(1.0, size / round(size * CENTER))
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def to_inputs(images: torch.Tensor, size: int) -> torch.Tensor:
    """Step 2: uint8 (B, C, H, W), or (B, H, W) for one channel -> float (B, C, size, size) in [0, 1], as Pillow's
    bilinear resize + ToTensor: rounded to uint8 levels as Pillow rounds (within 1/255 of it); antialias=True
    makes downscaling match Pillow too (upscaling it leaves alone)."""
    x = (images.unsqueeze(1) if images.dim() == 3 else images).float()
    if size != images.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x.div_(255)
