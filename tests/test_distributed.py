"""torchrun + DDP on CPU (gloo): two processes train to the weights of one."""

import json
import subprocess
import sys

import pytest
import torch

from nin.config import from_dict
from nin.train import init_model

pytestmark = pytest.mark.slow  # torchrun launches

# Plain SGD (d2l's optimizer) and dropout 0: each rank draws its own dropout masks, which cannot match
# the masks one process draws for the whole batch; everything else (data order, batch split, gradient
# average) is exact. 160 images in batches of 96: per epoch a full batch split 48 + 48 and a last batch
# of 64 split 32 + 32.
RUN = ["--preset", "quick", "--resize", "67",
       "--epochs", "2", "--batch-size", "96", "--lr", "0.01", "--momentum", "0",
       "--init", "kaiming", "--dropout", "0", "--train-limit", "160", "--test-limit", "200",
       "--device", "cpu", "--precision", "fp32"]  # fmt: skip


def nin_train(nproc: int, out, *extra: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "nin"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "nin"]  # fmt: skip
    return subprocess.run([*launcher, "train", *RUN, "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    for nproc, out in ((1, one), (2, two)):
        result = nin_train(nproc, out)
        assert result.returncode == 0, result.stderr[-3000:]
    return one, two, result


def test_two_processes_end_with_the_weights_of_one(runs):
    one, two, _ = runs
    a = torch.load(one / "checkpoint.pt", weights_only=True)
    b = torch.load(two / "checkpoint.pt", weights_only=True)
    start = init_model(from_dict(a["config"])).state_dict()
    # Floating point: gradients are summed in another order (per rank, then across ranks) and the
    # convolutions run with one thread per process instead of two; where a ReLU or max-pool decision
    # sits within rounding of a tie, the runs route a gradient differently. So each tensor must agree
    # to 0.1% of how far training moved it (measured: at most 0.002%, the same spread as one process
    # run with 1 vs 2 threads); a wrong shard, scale or batch would miss by tens of percent.
    for key, value in a["model"].items():
        moved = (value - start[key]).norm()
        assert moved > 0, key
        assert (b["model"][key] - value).norm() <= 1e-3 * moved, key
    assert b["position"]["world_size"] == 2 and len(b["rng"]["torch"]) == 2


def test_metrics_are_all_reduced(runs):
    one, two, _ = runs
    m1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(m1, m2, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=2 / 160)  # a near-tie may flip
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=2 / 200)


def test_only_rank_0_writes_and_prints(runs):
    _, two, result = runs
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint.pt", "config.json", "curves.png", "metrics.jsonl", "run.json"]  # fmt: skip
    assert result.stdout.count("training on cpu x 2 processes") == 1
    assert result.stdout.count("examples/sec on cpu") == 1


def test_batch_size_must_divide(tmp_path):
    result = nin_train(2, tmp_path / "run", "--batch-size", "95")
    assert result.returncode != 0 and "divide" in result.stderr


def test_resume_with_another_number_of_processes_is_refused(runs):
    """Each rank draws its own dropout masks and keeps its own RNG: an exact resume needs the same count."""
    _, two, _ = runs
    before = (two / "checkpoint.pt").read_bytes()
    result = subprocess.run([sys.executable, "-m", "nin", "train", "--resume", str(two)], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "written by 2 process(es), and this run has 1" in result.stderr
    assert f"torchrun --nproc_per_node=2 -m nin train --resume {two}" in result.stderr
    assert (two / "checkpoint.pt").read_bytes() == before
