"""What the fuzz tests share: Hypothesis's settings and real files to mutate.

In the suite each target tries a few dozen inputs, derandomized (the same ones every run, so that a failure
reproduces); `NIN_FUZZ_EXAMPLES=N` makes each target try N random inputs instead (a campaign: docs/faults.md).
No example database is kept: nothing is written outside the tests' temporary folders."""

import io
import os
import re

import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from PIL import Image

CAMPAIGN = int(os.environ.get("NIN_FUZZ_EXAMPLES", "0"))
settings.register_profile(
    "nin",
    deadline=None,  # a slow example is not a failure on 2 shared cores
    database=None,
    derandomize=not CAMPAIGN,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile("nin")


def examples(n: int) -> settings:
    """Settings for a target that tries `n` inputs in the suite, NIN_FUZZ_EXAMPLES in a campaign."""
    return settings(max_examples=CAMPAIGN or n)


def outcome(what: str, prefix: str = "") -> None:
    """Count an input's outcome (a NinError's kind: its message without the file name and numbers) in
    Hypothesis's statistics (pytest --hypothesis-show-statistics)."""
    event(prefix + re.sub(r"\d+", "N", what)[:70])


def image_files() -> dict[str, bytes]:
    """Small real image files of every format and mode the decoder reads: the seeds that mutations start from."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    images = {
        "png-L": (Image.fromarray(gray), "PNG", {}),
        "png-RGB": (Image.fromarray(rgb), "PNG", {}),
        "png-RGBA": (Image.fromarray(rgb).convert("RGBA"), "PNG", {}),
        "png-P": (Image.fromarray(rgb).convert("P"), "PNG", {"transparency": 3}),
        "png-I;16": (Image.fromarray(gray.astype(np.uint16) * 257), "PNG", {}),
        "jpeg-L": (Image.fromarray(gray), "JPEG", {}),
        "jpeg-RGB-exif": (Image.fromarray(rgb), "JPEG", {"exif": exif}),
        "jpeg-progressive": (Image.fromarray(rgb), "JPEG", {"progressive": True}),
        "bmp-RGB": (Image.fromarray(rgb), "BMP", {}),
        "webp-RGBA": (Image.fromarray(rgb).convert("RGBA"), "WEBP", {"lossless": True}),
    }
    files = {}
    for name, (img, fmt, options) in images.items():
        buffer = io.BytesIO()
        img.save(buffer, format=fmt, **options)
        files[name] = buffer.getvalue()
    return files


SEEDS = image_files()


@st.composite
def mutated(draw, seeds: dict[str, bytes] = SEEDS) -> bytes:
    """A real file of `seeds` with a few bytes flipped, overwritten, inserted or cut, or truncated."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)
