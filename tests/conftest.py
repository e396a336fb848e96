import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import SHORT
from nin.data.idx import IDX
from nin.data.registry import BUNDLED
from nin.data.stream import usable_cores

if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # `make test` runs the tests in pytest-xdist workers (two on two cores): each computes on its share of the
    # cores, or they fight over them (two workers of two threads each: slower than one process, docs/design.md).
    # The processes a test starts get the same share: runs compared bit for bit, one trained in a process and the
    # other in the test's, must use as many threads.
    threads = max(1, usable_cores() // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own checksum cache, so that no test depends on another's verification."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)
    monkeypatch.delenv("NIN_DATA_MIRROR", raising=False)


@pytest.fixture(autouse=True)
def _threads_kept():
    """No test changes torch's thread count for the tests after it (a run in this process compared bit for bit
    with one in a process of its own needs the count that process gets; nin's API must not change it either)."""
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, "the test left torch with another number of threads"


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the bundled Fashion-MNIST files."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in IDX["fashion-mnist"].sha256:
        shutil.copy(BUNDLED / name, folder / name)
    return folder


def _train_once(tmp_path_factory, name: str, **settings) -> Path:
    """Train a session-wide run with the same isolation as `_private_cache`."""
    from nin.config import Config
    from nin.training.loop import train

    out = tmp_path_factory.mktemp("runs") / name
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("NIN_DATA_DIR", raising=False)
        mp.delenv("NIN_DATA_MIRROR", raising=False)
        train(Config(**{**SHORT, **settings}), out)
    return out


def _read_only(run: Path):
    """Yield a shared run, then check that no test wrote into it (tests that write use a copy)."""
    snapshot = lambda: {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.iterdir()}  # noqa: E731
    before = snapshot()
    yield run
    assert snapshot() == before, f"a test wrote into the shared run {run}; write into a copy instead"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A short real-data run (see `SHORT`) shared by the train, evaluate, predict and CLI tests."""
    yield from _read_only(_train_once(tmp_path_factory, "short"))


@pytest.fixture(scope="session")
def run_at_131(tmp_path_factory) -> Path:
    """A briefly trained run at 131x131, where the class maps are 3x3 (for `cam` and `report`)."""
    yield from _read_only(_train_once(tmp_path_factory, "at131", resize=131, epochs=1, train_limit=128, test_limit=64))
