"""Progress in a terminal (unchanged: tqdm's text bar on stderr) and in a Jupyter notebook (a notebook bar,
the curves redrawn in the cell), the notebook faked here; tests/test_notebook.py runs a real kernel."""

import importlib.util
import sys
import types

import pytest
import tqdm
import tqdm.notebook

from helpers import SHORT, require
from nin.config import Config
from nin.training import progress
from nin.training.loop import train


class ZMQInteractiveShell:  # the class name is what tells a Jupyter kernel
    pass


@pytest.fixture
def notebook(monkeypatch):
    """A fake Jupyter kernel: IPython's get_ipython() and display(), recording what is displayed."""
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.data))

    def display(obj, display_id=False):
        shown.append(("display", obj.data))
        return Handle() if display_id else None

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    ipython.version_info = (9, 0)  # matplotlib reads it
    display_module = types.ModuleType("IPython.display")
    display_module.display = display
    display_module.Image = lambda data, format: types.SimpleNamespace(data=data, format=format)
    ipython.display = display_module
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    bars = []
    monkeypatch.setattr(tqdm.notebook, "tqdm", lambda **kwargs: bars.append(kwargs) or tqdm.tqdm(disable=True))
    return types.SimpleNamespace(shown=shown, bars=bars)


def test_a_terminal_keeps_the_text_bar_and_shows_no_figure(tmp_path):
    assert not progress.in_notebook()
    bar = progress.progress_bar(total=3, file=sys.stderr, disable=True)
    assert type(bar) is tqdm.tqdm
    progress.LiveCurves().show(tmp_path / "never-read.png")  # outside a notebook it reads nothing


def test_ipythons_terminal_shell_is_not_a_notebook(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: object()))
    assert not progress.in_notebook()


def test_training_in_a_notebook_shows_a_notebook_bar_and_redraws_the_curves_in_place(notebook, tmp_path):
    require("ipywidgets")  # the notebook bar's
    config = Config(**{**SHORT, "epochs": 3, "train_limit": 64, "test_limit": 64})
    train(config, tmp_path)
    assert [bar["desc"] for bar in notebook.bars] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert [kind for kind, _ in notebook.shown] == ["display", "update", "update"]  # one figure, redrawn
    assert notebook.shown[-1][1] == (tmp_path / "curves.png").read_bytes()


def test_without_ipywidgets_a_notebook_keeps_the_text_bar(notebook, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert progress.in_notebook()
    assert type(progress.progress_bar(total=1, disable=True)) is tqdm.tqdm and not notebook.bars
