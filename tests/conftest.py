import shutil
from pathlib import Path

import pytest

from helpers import SHORT
from nin.data.idx import IDX
from nin.data.registry import BUNDLED


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own checksum cache, so that no test depends on another's verification."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)
    monkeypatch.delenv("NIN_DATA_MIRROR", raising=False)


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
