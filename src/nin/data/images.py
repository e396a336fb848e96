"""The one image decoder: image files (or file objects) -> uint8 (C, H, W) in a run's data format."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nin.data.types import Spec
from nin.errors import NinError

Images = str | Path | Sequence[str | Path] | torch.Tensor  # image files, or uint8 images (N, [C,] H, W)
MAX_PIXELS = 40_000_000  # a 40-megapixel photo decodes (about 120 MB as RGB); a decompression bomb does not

GRAYSCALE = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # Pillow's modes without colour
# The formats nin opens, each with a decoder of Pillow's own: every other file (EPS, PSD, FITS, TIFF, ...) is not
# even identified, so no plugin of theirs runs and no external program (Ghostscript for EPS) is ever started.
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # the files of those formats, in any case (.JPEG too)
BACKGROUND = 0  # transparent pixels are laid over black: the background of Fashion-MNIST and MNIST images
SUPPORTED = "PNG, JPEG, BMP or WebP"
# What Pillow raises for a damaged file (its decoders' OSError, its parsers' ValueError, EOFError and SyntaxError,
# and struct's and zlib's errors from inside them): tests/fuzz finds them. Any other exception is a bug, not the
# file's fault, and surfaces as one.
DAMAGED = (OSError, ValueError, EOFError, SyntaxError, struct.error, zlib.error)


def load_image(path: Path | BinaryIO, spec: Spec) -> torch.Tensor:
    """An image file (a path, or a binary file object such as io.BytesIO, named in errors by its `name`
    attribute) -> uint8 (C, H, W) in the format of the run's data (`spec`): grayscale or RGB, at its
    stored size (28x28 for Fashion-MNIST).

    Images of another size are first brought to the stored size (bilinear, antialiased), so that they
    then go through exactly the resize the network was trained with. No inversion: Fashion-MNIST shows
    a light garment on a black background. See `open_image` for what is read and how.
    """
    return decode(path, spec.channels, spec.size)


def open_image(source: Path | BinaryIO, draft: int | None = None) -> Image.Image:
    """One image, decoded in mode L (grayscale) or RGB, or one `NinError` that names the file.

    Only FORMATS are opened; images over MAX_PIXELS are refused from their header, before they are decoded.
    The EXIF orientation is applied (a phone photo stands upright); transparent pixels are composited over
    BACKGROUND; 16-bit (and 32-bit integer) grayscale is scaled to 8 bits, not clipped. With `draft`, a JPEG
    larger than `draft` x `draft` is decoded at a reduced scale (1/2, 1/4 or 1/8, never below `draft`):
    decoding is the costly part of reading photos, and this makes it up to 8x cheaper."""
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "the image")
    bomb = f"{name}: {{}} is over the limit of {MAX_PIXELS:,} pixels (a decompression bomb?); use a smaller image"
    try:
        with Image.open(source, formats=FORMATS) as img:
            if img.width * img.height > MAX_PIXELS:
                raise NinError(bomb.format(f"{img.width}x{img.height}"))
            if draft and img.format == "JPEG":
                img.draft("L" if img.mode == "L" else "RGB", (draft, draft))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an upright image (40 MP: 120 MB)
            return to_8bit(img)
    except Image.DecompressionBombError:  # Pillow's own limit, checked in Image.open: far over ours
        raise NinError(bomb.format("its size")) from None
    except FileNotFoundError:
        raise NinError(f"{name}: no such image file") from None
    except UnidentifiedImageError:  # its message names the file object, not the file
        raise NinError(f"{name}: not a supported image format; nin reads {SUPPORTED} files") from None
    except DAMAGED as e:
        raise NinError(f"{name}: cannot read it as an image ({type(e).__name__}: {str(e)[:200]}); use an "
                       f"undamaged {SUPPORTED} file") from None  # fmt: skip


def to_8bit(img: Image.Image) -> Image.Image:
    """`img` in mode L or RGB: 16-bit gray (I;16, I;16B, and I, as which older Pillows open 16-bit PNGs)
    scaled to 8 bits, transparent pixels composited over BACKGROUND."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.int64)  # 16-bit samples (PNG's I;16, or I): the top 8 bits
        return Image.fromarray(np.clip(wide >> 8, 0, 255).astype(np.uint8), "L")
    gray = img.mode in GRAYSCALE
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in img.info:
        pixels = np.asarray(img.convert("LA" if gray else "RGBA")).astype(np.uint32)
        alpha = pixels[..., -1:]
        blended = (pixels[..., :-1] * alpha + BACKGROUND * (255 - alpha) + 127) // 255
        return Image.fromarray(blended.astype(np.uint8).squeeze(-1) if gray else blended.astype(np.uint8),
                               "L" if gray else "RGB")  # fmt: skip
    return img if img.mode in ("L", "RGB") else img.convert("L" if gray else "RGB")


def decode(path: Path | BinaryIO, channels: int | None, size: int) -> torch.Tensor:
    """One image file as uint8 (C, size, size): `channels` 1 (gray) or 3 (RGB), or None for the image's own
    (1 for a grayscale image, else 3); read by `open_image`, then resized (bilinear, antialiased)."""
    img = open_image(path, draft=size)
    channels = channels or (1 if img.mode == "L" else 3)
    mode = "L" if channels == 1 else "RGB"
    img = img if img.mode == mode else img.convert(mode)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, channels).permute(2, 0, 1).contiguous()


def load_images(images: Images, spec: Spec) -> tuple[torch.Tensor, list[str]]:
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
        raise NinError(f"no images given; pass image files ({SUPPORTED}) or a uint8 tensor of images")
    return torch.stack([load_image(p, spec) for p in paths]), [str(p) for p in paths]
