"""The one image decoder (nin.data.images): only allow-listed formats are opened and no external program runs;
photos stand upright; transparency is composited; 16-bit gray is scaled, not clipped; decompression bombs are
refused from their header; every failure is one NinError that names the file."""

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile, ImageOps

from nin.cli import main
from nin.data.images import BACKGROUND, MAX_PIXELS, open_image, to_8bit
from nin.data.preprocess import prepare
from nin.errors import NinError

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def saved(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that leaves a marker file when anything runs it; returns the marker's path."""
    marker, bin_dir = tmp_path / "ghostscript-ran", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # newer Pillows cache where gs is: made to look afresh (older ones, 10.0 included, look each time)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)
    return marker


def test_eps_is_not_a_supported_format_and_ghostscript_never_runs(tmp_path, fake_ghostscript, capsys):
    eps = tmp_path / "drawing.eps"
    eps.write_bytes(EPS)
    with pytest.raises(NinError) as e:
        open_image(eps)
    assert str(e.value) == f"{eps}: not a supported image format; nin reads PNG, JPEG, BMP or WebP files"
    assert main(["predict", "--weights", "fast", str(eps)]) == 2
    assert capsys.readouterr().err == f"nin: error: {e.value}\n"
    assert not fake_ghostscript.exists()
    with pytest.raises(subprocess.CalledProcessError), Image.open(eps) as img:  # the control: unrestricted, it runs
        img.load()
    assert fake_ghostscript.exists()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt):
    """A phone photo stored sideways: orientation 6 says 'rotate 90 degrees clockwise to view'."""
    stored = Image.new("L", (40, 20), 0)
    stored.paste(255, (0, 0, 20, 20))  # the left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    img = open_image(io.BytesIO(saved(stored, fmt, exif=exif)))
    assert img.size == (20, 40)  # upright: taller than wide
    upright = pixels(img)
    assert upright[:20].mean() > 250 and upright[20:].mean() < 5  # the white half is now on top


@pytest.mark.parametrize(
    "img, expected",
    [
        (Image.new("RGBA", (4, 4), (255, 100, 0, 64)), (64, 25, 0)),  # a quarter opaque
        (Image.new("LA", (4, 4), (200, 128)), (100,)),
        (Image.new("RGBa", (4, 4), (64, 25, 0, 64)), (64, 25, 0)),  # premultiplied, the same colour
    ],
)
def test_alpha_is_composited_over_black(img, expected):
    assert BACKGROUND == 0
    out = open_image(io.BytesIO(saved(img.convert("RGBA") if img.mode == "RGBa" else img)))
    assert out.mode == ("L" if len(expected) == 1 else "RGB")
    assert np.abs(pixels(out).reshape(16, -1) - expected).max() <= 1


def test_palette_and_colour_key_transparency_are_composited():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 250, 250, 250])
    key = Image.new("RGB", (4, 4), (250, 250, 250))
    for img in (palette, key):  # the transparent colour is white: it must come out black
        data = saved(img, transparency=1 if img.mode == "P" else (250, 250, 250))
        assert pixels(open_image(io.BytesIO(data))).max() == 0


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_gray_is_scaled_not_clipped(mode):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    raw = {"I;16": ramp.astype("<u2"), "I;16B": ramp.astype(">u2"), "I": ramp.astype("<i4")}[mode]
    img = to_8bit(Image.frombytes(mode, (16, 16), raw.tobytes()))
    assert img.mode == "L"
    assert np.array_equal(pixels(img), ramp >> 8)  # the top 8 bits: 0..255 over the whole ramp
    assert (pixels(img) == 255).mean() < 0.01


def test_a_16_bit_png_file_is_scaled():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    img = open_image(io.BytesIO(saved(Image.fromarray(ramp))))
    assert img.mode == "L" and np.array_equal(pixels(img), ramp >> 8)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height gray pixels and holds one row of them: its header is a bomb's."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * (width + 1))), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )


@pytest.mark.parametrize("width, height", [(7000, 7000), (20000, 20000)])  # ours, and over Pillow's own limit
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch, width, height):
    assert width * height > MAX_PIXELS
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(width, height))
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    with pytest.raises(NinError, match=f"^{bomb}: .* is over the limit of 40,000,000 pixels"):
        open_image(bomb)
    assert loads == []  # never decoded


def damaged_files(tmp_path: Path) -> dict[str, Path]:
    gray = Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) * 7)
    png, jpeg = saved(gray), saved(gray, "JPEG")
    crc = bytearray(png)
    crc[29] ^= 0xFF  # inside IHDR's CRC
    files = {
        "text": b"not an image",
        "empty": b"",
        "truncated PNG": png[: len(png) // 2],
        "truncated JPEG": jpeg[: len(jpeg) // 2],
        "PNG with a bad CRC": bytes(crc),
        "EPS": EPS,
        "GIF": saved(gray, "GIF"),
        "TIFF": saved(gray, "TIFF"),
    }
    paths = {}
    for case, data in files.items():
        paths[case] = tmp_path / f"{case.replace(' ', '-')}.png"
        paths[case].write_bytes(data)
    paths["a folder"] = tmp_path / "folder.png"
    paths["a folder"].mkdir()
    paths["missing"] = tmp_path / "missing.png"
    return paths


def test_every_decoder_error_is_one_nin_error_naming_the_file(tmp_path):
    for case, path in damaged_files(tmp_path).items():
        with pytest.raises(NinError) as e:
            prepare(path, None, 28)
        assert str(e.value).startswith(f"{path}: "), case
        with pytest.raises(NinError) as e:  # a file object: named by its name
            upload = io.BytesIO(path.read_bytes() if path.is_file() else b"")
            upload.name = "the uploaded file"
            prepare(upload, 1, 28)
        assert str(e.value).startswith("the uploaded file: "), case


@pytest.mark.slow  # a process of its own: its peak memory is the decoder's
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_transparency_and_16_bit_decode_in_a_few_bytes_per_pixel(tmp_path, mode):
    """A 4-megapixel image with alpha or 16-bit samples decodes with a peak of a few bytes per pixel over the
    decoded image (Pillow's RGB: 4 bytes), not a 32- or 64-bit copy of it (44 and 24 bytes per pixel before)."""
    side = 2000
    ramp = np.add.outer(np.arange(side), np.arange(side)) % 256
    if mode == "I;16":  # a 16-bit PNG (Pillow opens it as I;16 whatever the byte order it stores)
        img = Image.frombytes(mode, (side, side), (ramp * 257).astype("<u2").tobytes())
    else:
        img = Image.fromarray(np.stack([ramp] * {"RGBA": 4, "LA": 2, "P": 1}[mode], -1).astype(np.uint8).squeeze())
        img = img.convert(mode) if mode != "P" else img.convert("P")
    options = {"transparency": 3} if mode == "P" else {}
    (tmp_path / "big.png").write_bytes(saved(img, **options))
    probe = (  # VmHWM (peak resident memory) before and after decoding, in kB
        "import sys\nfrom nin.data.images import open_image\n"
        "def peak():\n    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
        "before = peak()\nimg = open_image(sys.argv[1])\nprint(img.mode, peak() - before)"
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "big.png")], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out_mode, grown_kb = result.stdout.split()
    assert out_mode == ("L" if mode in ("LA", "I;16") else "RGB")
    assert int(grown_kb) * 1024 / side**2 < 12, f"{int(grown_kb) * 1024 / side**2:.1f} bytes per pixel"


def test_a_wrong_call_in_the_decoder_surfaces_as_itself(tmp_path, monkeypatch):
    """Only what damaged files make Pillow raise becomes "cannot read it as an image": a TypeError from a wrong
    call (exif_transpose(in_place=...) on a Pillow without it) is a bug, and is not dressed as a damaged file."""
    path = tmp_path / "good.png"
    Image.new("L", (4, 4)).save(path)
    assert prepare(path, None, 4).shape == (1, 4, 4)

    def old_pillow(img, **kwargs):
        raise TypeError("exif_transpose() got an unexpected keyword argument 'in_place'")

    monkeypatch.setattr(ImageOps, "exif_transpose", old_pillow)
    with pytest.raises(TypeError, match="in_place"):
        prepare(path, None, 4)
