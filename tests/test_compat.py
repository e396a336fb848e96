"""What nin 0.1.0 wrote before the package was reorganised still loads, and answers the same.

tests/fixtures/v0.1.0/run is a run directory written by main at 6d6b7c3 (the flat layout):
`nin train --preset fast --arch nin-bn --width 8 --epochs 1 --train-limit 1024 --test-limit 256 --normalize`,
without its curves.png. expected.json holds the logits that version computed for the first 8 test images,
and the accuracy `nin evaluate --test-limit 256` gave.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

import nin

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1.0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def old_run(tmp_path):
    shutil.copytree(FIXTURE / "run", tmp_path / "run")
    return tmp_path / "run"


def first_logits(run: nin.Run) -> torch.Tensor:
    images, _ = nin.load_fashion_mnist("test")
    with torch.no_grad():
        return run.model.eval()(images[:8].unsqueeze(1).float().div(255))


@pytest.mark.parametrize("part", ["run", "checkpoint"])
def test_a_run_directory_and_a_checkpoint_of_0_1_0_load_and_answer_the_same(old_run, part):
    run = nin.load(old_run if part == "run" else old_run / "checkpoint.pt")
    assert run.config.arch == "nin-bn" and run.config.normalize and run.spec.classes == nin.CLASS_NAMES
    torch.testing.assert_close(first_logits(run), torch.tensor(EXPECTED["first_8_test_logits"]), atol=2e-5, rtol=0)
    if part == "run":
        assert run.record["sessions"][0]["nin_commit"] == "6d6b7c331c56" and run.test_acc == 0.30859375


def accuracy(run: nin.Run, chosen: torch.Tensor) -> float:
    """The accuracy of `run.predict` (the run's preprocessing) on the test images at `chosen`."""
    images, labels = nin.load_fashion_mnist("test")
    top = [nin.CLASS_NAMES.index(r["top"][0]["class"]) for r in run.predict(images[chosen], top=1)]
    return (torch.tensor(top) == labels[chosen]).float().mean().item()


def test_a_0_1_0_run_evaluates_as_it_did(old_run):
    """0.1.0 tested on the first 256 test images; its preprocessing (implied: squash at 28) still gives that
    exact figure there. `--test-limit 256` now draws 256 images from every class, scored the same way."""
    run = nin.load(old_run)
    assert run.preprocess == nin.data.Preprocess(channels=1, stored=28, size=28, crop="squash")
    assert accuracy(run, torch.arange(256)) == EXPECTED["test_acc_256"]
    drawn = nin.data.subsets.pick(nin.load_fashion_mnist("test")[1], 256)
    assert run.evaluate(test_limit=256)["test_acc"] == accuracy(run, drawn)
