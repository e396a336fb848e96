"""Fuzz the image decoder: random bytes and mutated real PNG, JPEG, BMP and WebP files give an image in the
asked format or one NinError that names the file, never another exception."""

import io

import pytest
import torch
from fuzzing import SEEDS, examples, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st

from nin.data.preprocess import prepare
from nin.errors import NinError


def check_decoded(data: bytes, channels: int | None, size: int) -> None:
    upload = io.BytesIO(data)
    upload.name = "fuzzed.png"
    try:
        x = prepare(upload, channels, size)
    except NinError as e:
        assert str(e).startswith("fuzzed.png: ") and "\n" not in str(e), str(e)
        outcome(str(e).removeprefix("fuzzed.png: "))
        return
    outcome("decoded")
    assert x.dtype == torch.uint8 and x.shape[1:] == (size, size) and x.shape[0] == (channels or x.shape[0])
    assert x.shape[0] in (1, 3)


def test_the_seeds_prepare():
    for name, data in SEEDS.items():
        assert prepare(io.BytesIO(data), None, 28).shape[1:] == (28, 28), name


@examples(60)
@given(st.binary(max_size=512), st.sampled_from([None, 1, 3]))
def test_random_bytes(data, channels):
    check_decoded(data, channels, 28)


@pytest.mark.parametrize("size", [28, 7])  # 7: below the JPEG draft's smallest scale of the 20x24 seeds
@examples(80)
@given(mutated(), st.sampled_from([None, 1, 3]))
def test_mutated_real_files(size, data, channels):
    check_decoded(data, channels, size)
