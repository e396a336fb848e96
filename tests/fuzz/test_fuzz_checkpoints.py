"""Fuzz what `nin.load` reads: checkpoints and bare state_dicts with bits flipped, bytes overwritten or cut,
their pickles mutated inside an intact zip, foreign pickles (any Python data, and one that would run a program
when unpickled) and fuzzed run records: each gives a Run or one NinError naming the file, never another
exception, never a program run, never a file written."""

import dataclasses
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from fuzzing import examples, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st

import nin
from nin.config import load_preset
from nin.data.types import Spec
from nin.errors import NinError
from nin.models.registry import build
from nin.training.checkpoint import save_checkpoint


class Files(dict):
    def __repr__(self) -> str:  # Hypothesis prints a failing example's arguments: not 70 kB of checkpoint
        return f"<files {sorted(self)}>"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    """A real nin checkpoint of a tiny nin-bn, and the bare state_dict of the seed's NiN."""
    folder = tmp_path_factory.mktemp("seeds")
    config = dataclasses.replace(load_preset("fast"), width=8)
    net = build(config.arch, config.dropout, config.width)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    position = {"epochs": 1, "steps": 0, "sums": [0.0, 0, 0, 0.0], "world_size": 1}
    save_checkpoint(folder / "checkpoint.pt", net, optimizer, position, config, Spec(), [{"epoch": 1}],
                    [torch.get_rng_state()], [])  # fmt: skip
    torch.save(build("nin").state_dict(), folder / "seed.pt")
    return Files(checkpoint=(folder / "checkpoint.pt").read_bytes(), state_dict=(folder / "seed.pt").read_bytes())


def check_load(path: Path) -> None:
    """nin.load(path) gives a Run or one NinError naming the file; nothing new appears beside it."""
    before = sorted(path.parent.iterdir())
    try:
        run = nin.load(path)
    except NinError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        outcome(str(e).replace(str(path), "FILE"))
    else:
        assert isinstance(run.model, torch.nn.Module) and not run.model.training
        outcome("loaded")
    assert sorted(path.parent.iterdir()) == before


def test_the_seeds_load(files, tmp_path):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert isinstance(nin.load(tmp_path / name).model, torch.nn.Module)
        (tmp_path / f"rezipped-{name}").write_bytes(rezipped(data, lambda pkl: pkl))  # the zip rewritten loads too
        assert isinstance(nin.load(tmp_path / f"rezipped-{name}").model, torch.nn.Module)


@examples(40)
@given(st.data())
def test_mutated_files(files, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("mutated") / "checkpoint.pt"
    path.write_bytes(data.draw(mutated(files)))
    check_load(path)


def rezipped(original: bytes, mutate) -> bytes:
    """The zip `original` (torch.save's format) with its pickle data.pkl replaced by mutate(data.pkl)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            content = src.read(info)
            dst.writestr(info, mutate(content) if info.filename.endswith("/data.pkl") else content)
    return out.getvalue()


@examples(40)
@given(st.data())
def test_mutated_pickles_in_an_intact_zip(files, tmp_path_factory, data):
    name = data.draw(st.sampled_from(sorted(files)))
    path = tmp_path_factory.mktemp("pickle") / "checkpoint.pt"
    path.write_bytes(rezipped(files[name], lambda pkl: data.draw(mutated({"data.pkl": pkl}))))
    check_load(path)


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8),
    st.builds(torch.zeros, st.integers(0, 3), st.integers(1, 3)),  # small tensors
)  # fmt: skip
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12),
                      inner, max_size=4), max_leaves=12)  # fmt: skip
keys = st.sampled_from(["format", "model", "config", "data", "position", "metrics", "sha256", "rng", "optimizer"])


@examples(60)
@given(st.one_of(values, st.dictionaries(keys, values), st.dictionaries(st.text(max_size=12), leaves)),
       st.booleans())  # fmt: skip
def test_foreign_pickles(tmp_path_factory, value, with_torch):
    path = tmp_path_factory.mktemp("foreign") / "checkpoint.pt"
    if with_torch:
        torch.save(value, path)
    else:
        path.write_bytes(pickle.dumps(value))
    check_load(path)


class RunsAProgram:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_a_pickle_that_would_run_a_program_is_refused_unrun(tmp_path):
    marker = tmp_path / "it-ran"
    for name, data in {"torch": None, "pickle": pickle.dumps(RunsAProgram(marker))}.items():
        path = tmp_path / f"{name}.pt"
        if data is None:
            torch.save({"model": RunsAProgram(marker)}, path)
        else:
            path.write_bytes(data)
        with pytest.raises(NinError, match=f"^{path}: not a readable nin checkpoint"):
            nin.load(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(RunsAProgram(marker)))  # the control: unpickled without weights_only, it runs
    assert marker.exists()


@examples(40)
@given(st.one_of(st.text(max_size=200), values.map(lambda v: json.dumps(v, default=str))))
def test_fuzzed_run_records(files, tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("run")
    (folder / "checkpoint.pt").write_bytes(files["checkpoint"])
    (folder / "run.json").write_text(text)
    try:
        nin.load(folder)
    except NinError as e:
        assert str(folder / "run.json") in str(e) and "\n" not in str(e), str(e)
        outcome(str(e).replace(str(folder), "RUN"))
    else:
        outcome("loaded")
