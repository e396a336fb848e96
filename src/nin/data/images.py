"""The one image decoder: an image file (or file object) -> a Pillow image in mode L or RGB, checked.

What becomes of it then (channels, crop, size) is nin/data/preprocess.py's."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from nin.errors import NinError

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


def open_image(source: Path | BinaryIO, draft: int | None = None) -> Image.Image:
    """One image, decoded in mode L (grayscale) or RGB, or one `NinError` that names the file.

    Only FORMATS are opened; images over MAX_PIXELS are refused from their header, before they are decoded.
    The EXIF orientation is applied (a phone photo stands upright); transparent pixels are composited over
    BACKGROUND; 16-bit (and 32-bit integer) grayscale is scaled to 8 bits, not clipped. With `draft`, a JPEG
    larger than `draft` x `draft` is decoded at a reduced scale (1/2, 1/4 or 1/8, never below `draft`):
    decoding is the costly part of reading photos, and this makes it up to 8x cheaper."""
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "the image")
    name = os.fsencode(name).decode(errors="backslashreplace") if isinstance(name, (str, os.PathLike)) else name
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
    scaled to 8 bits, transparent pixels composited over BACKGROUND. Pillow's own operations, in its 8- and
    16-bit modes (I;16B: 32-bit): a few bytes per pixel at most, not a widened copy (a 36-megapixel upload)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        if img.mode not in ("I;16", "I", "F"):  # Pillow's point() takes only these
            img = img.convert("I")
        return img.point(lambda v: v / 256).convert("L")  # the top 8 bits; I and F clip to 0..255 in convert
    gray = img.mode in GRAYSCALE
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in img.info:
        img = img if img.mode == ("LA" if gray else "RGBA") else img.convert("LA" if gray else "RGBA")
        out = Image.new("L" if gray else "RGB", img.size, BACKGROUND)
        out.paste(img, mask=img)  # round(c * alpha / 255) over BACKGROUND, as its alpha band says
        return out
    return img if img.mode in ("L", "RGB") else img.convert("L" if gray else "RGB")
