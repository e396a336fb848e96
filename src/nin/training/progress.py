"""Training progress where the user watches it: a terminal gets tqdm's text bar on stderr, as always; a
Jupyter notebook gets a notebook progress bar and the training curves redrawn in the cell after every
epoch (what d2l's Animator does).

Nothing here imports IPython unless a notebook kernel has already imported it: a terminal, a script and CI
run exactly as before.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tqdm import tqdm


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQInteractiveShell); False in a terminal, IPython's
    terminal shell, a script or CI."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)  # a kernel has imported IPython
    return get_ipython is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell"


def progress_bar(**kwargs: object) -> tqdm:
    """tqdm's text bar, as the terminal always had it; in a notebook, tqdm's notebook bar (a widget: it needs
    ipywidgets, and without them the text bar stays)."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_bar

        return notebook_bar(**kwargs)  # it writes to the cell, whatever `file` says
    return tqdm(**kwargs)


class LiveCurves:
    """The run's curves.png shown in the notebook cell that trains, and replaced in place after each epoch;
    outside a notebook, nothing."""

    def __init__(self) -> None:
        self._handle = None  # the cell's display of the curves, once shown

    def show(self, png: Path) -> None:
        if not in_notebook():
            return
        from IPython.display import Image, display

        image = Image(data=Path(png).read_bytes(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
