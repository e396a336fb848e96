import shutil
from pathlib import Path

import pytest

from nin.data import BUNDLED, FILES
from short_run import SHORT


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
    for name in FILES:
        shutil.copy(BUNDLED / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A short real-data run (see `SHORT`) shared by the train, evaluate, predict and CLI tests."""
    from nin.config import Config
    from nin.train import train

    out = tmp_path_factory.mktemp("runs") / "short"
    with pytest.MonkeyPatch.context() as mp:  # the same isolation as `_private_cache`, for a session fixture
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("NIN_DATA_DIR", raising=False)
        mp.delenv("NIN_DATA_MIRROR", raising=False)
        train(Config(**SHORT), out)
    return out
