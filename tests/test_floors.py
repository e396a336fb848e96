"""The declared floors are the tested ones: requirements-oldest.txt (what `make test-oldest` installs and runs the
quick tier with) pins every dependency of nin and of its extras at exactly the minimum pyproject.toml declares."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]
UNTESTED = {"torch"}  # only one CPU build of it can be had here (the Makefile's TORCH): docs/design.md#floors


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    found = {}
    for text in project["dependencies"] + extras:
        req = Requirement(text)
        if canonicalize_name(req.name) != "nin":  # nin[export] in dev: the extra itself is listed too
            found[canonicalize_name(req.name)] = req
    return found


def pinned() -> dict[str, Version]:
    lines = (ROOT / "requirements-oldest.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins), pins
    return {canonicalize_name(r.name): Version(next(iter(r.specifier)).version) for r in pins}


def test_every_dependency_has_a_floor_and_it_is_the_pinned_version():
    floors, pins = declared(), pinned()
    assert set(pins) == set(floors) - UNTESTED
    for name, req in floors.items():
        (spec,) = req.specifier  # one bound: a floor (>=), or ruff's exact pin (==)
        assert spec.operator in (">=", "=="), req
        if name not in UNTESTED:
            assert Version(spec.version) == pins[name], f"{req} declared, {name}=={pins[name]} tested"
