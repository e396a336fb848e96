"""notebooks/nin.ipynb: committed without outputs, and executed whole by a real Jupyter kernel on the test budget."""

import json
import sys
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from helpers import SEED_SHAPE_WALK

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "nin.ipynb"


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    (cell,) = (c for c in nb.cells if tag in c.metadata.get("tags", []))
    return cell


def test_the_committed_notebook_is_valid_and_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} keeps its outputs"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}  # no widget state, no papermill record
    assert "NIN_NOTEBOOK_BUDGET" in tagged(nb, "parameters").source


def test_jupyter_is_only_in_the_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split("[")[0].startswith(("jupyter", "ipy", "nb"))]
    dev = {Requirement(r).name for r in project["optional-dependencies"]["dev"]}
    assert {"nbclient", "ipykernel", "ipywidgets"} <= dev


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec that starts this interpreter (the venv's), whatever kernels the machine has installed."""
    name = "nin-test-venv"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before the user's and the system's
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no profile of the user's
    return name


@pytest.mark.slow  # starts a Jupyter kernel
def test_the_notebook_runs_whole_on_the_test_budget(tmp_path, monkeypatch, venv_kernel):
    from nbclient import NotebookClient

    monkeypatch.setenv("NIN_NOTEBOOK_BUDGET", "test")
    (tmp_path / "work").mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=venv_kernel, timeout=120,
                            resources={"metadata": {"path": str(tmp_path / "work")}})  # fmt: skip
    start = time.perf_counter()
    client.execute()  # any cell's error raises CellExecutionError
    assert time.perf_counter() - start < 120, "the test budget should run in well under 2 minutes on 2 cores"

    walk = tagged(nb, "shape-walk").outputs  # printed lines may arrive as several stream outputs
    assert {(o.output_type, o.get("name")) for o in walk} == {("stream", "stdout")}
    assert "".join(o.text for o in walk) == SEED_SHAPE_WALK
    code = [c for c in nb.cells if c.cell_type == "code"]
    trains_seed = next(c for c in code if 'nin.train("d2l"' in c.source)
    seeds_line = "test images of fashion-mnist at 224x224, fp32"  # the seed's data, size and precision
    assert any(seeds_line in o.get("text", "") for o in trains_seed.outputs)
    trains_fast = next(c for c in code if 'nin.train("fast"' in c.source)
    kinds = [key for o in trains_fast.outputs for key in o.get("data", {})]
    assert "image/png" in kinds  # the curves, drawn in the cell
    assert "application/vnd.jupyter.widget-view+json" in kinds  # the notebook progress bar
    assert (tmp_path / "work" / "runs" / "notebook-fast" / "report.html").is_file()
    digits = next(c for c in code if 'nin.data.load("mnist")' in c.source)  # other data: one call, then train
    text = "".join(o.get("text", "") for o in digits.outputs)
    assert "torch.Size([60000, 1, 28, 28]) torch.uint8 classes: 0 1 2 3 4 5 6 7 8 9" in text
    assert "of mnist at 28x28" in text
