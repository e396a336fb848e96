"""The tests' guard of optional extras: a missing or broken one skips its tests on a developer's machine, and
fails them in CI (.ci/run sets NIN_REQUIRE_EXTRAS), so that CI never passes by running fewer tests."""

import sys
from pathlib import Path

import pytest

from helpers import require

TESTS = Path(__file__).parent


def test_a_missing_extra_fails_its_tests_under_nin_require_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    monkeypatch.setenv("NIN_REQUIRE_EXTRAS", "1")
    with pytest.raises(pytest.fail.Exception, match="^NIN_REQUIRE_EXTRAS is set but onnxruntime .*cannot be imp"):
        require("onnxruntime")
    monkeypatch.delenv("NIN_REQUIRE_EXTRAS")
    with pytest.raises(pytest.skip.Exception, match="^onnxruntime .*cannot be imported"):
        require("onnxruntime")


def test_an_installed_extra_is_returned():
    assert require("hypothesis") is sys.modules["hypothesis"]


def test_ci_requires_the_extras_and_every_guard_uses_the_helper():
    assert "export NIN_REQUIRE_EXTRAS=1" in (TESTS.parent / ".ci" / "run").read_text()
    skipping = [p.name for p in TESTS.rglob("*.py") if "importorskip" in p.read_text() and p.name != "test_helpers.py"]
    assert not skipping, f"{skipping}: use helpers.require, which fails under NIN_REQUIRE_EXTRAS instead of skipping"
