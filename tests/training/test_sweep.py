"""`nin sweep`: the same recipe over seeds 0..N-1, with the distribution and the failures counted."""

import json

import pytest

from nin.cli import main
from nin.training.sweep import failed_below

TINY = ["--arch", "nin-bn", "--width", "8", "--resize", "28", "--epochs", "1", "--batch-size", "64",
        "--momentum", "0.9", "--init", "kaiming", "--dropout", "0", "--train-limit", "1024", "--test-limit", "200",
        "--device", "cpu", "--precision", "fp32"]  # fmt: skip


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_sweep_prints_the_distribution_and_writes_every_run(tmp_path, capsys):
    assert main(["sweep", *TINY, "--lr", "0.1", "--seeds", "3", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "s" / "sweep.json").read_text())
    accs = [r["test_acc"] for r in result["runs"]]
    assert [r["seed"] for r in result["runs"]] == [0, 1, 2] and len(set(accs)) > 1  # the seed matters
    assert result["min"] == min(accs) and result["max"] == max(accs) and result["median"] == sorted(accs)[1]
    assert f"min {min(accs):.4f}, median {sorted(accs)[1]:.4f}, max {max(accs):.4f}" in out
    assert f"failed runs: {sum(a < 0.5 for a in accs)} of 3" in out
    for seed in range(3):
        config = json.loads((tmp_path / "s" / f"seed-{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["arch"] == "nin-bn"


def test_diverging_runs_are_counted_not_fatal(tmp_path, capsys):
    assert main(["sweep", *TINY, "--lr", "1e4", "--seeds", "2", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "seed 1: diverged" in out and "failed runs: 2 of 2" in out and "median" not in out
    assert [r["status"] for r in json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]] == ["diverged"] * 2
    assert main(["sweep", *TINY, "--seeds", "2", "--out", str(tmp_path / "s")]) == 2  # never mixed with old runs
    assert "already exists" in capsys.readouterr().err


def test_a_run_below_half_accuracy_counts_as_failed(tmp_path, capsys):
    """lr 1e-6: the network keeps about its initial weights, so it guesses (far below 0.5) without diverging."""
    assert main(["sweep", *TINY, "--lr", "1e-6", "--seeds", "1", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    (run,) = json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]
    assert run["status"] == "failed" and run["test_acc"] < 0.5
    assert "seed 0: failed" in out and "failed runs: 1 of 1" in out
    assert main(["sweep", *TINY, "--seeds", "0", "--out", str(tmp_path / "t")]) == 2
    assert "--seeds 0: give the number of seeds" in capsys.readouterr().err


def test_the_failure_threshold_is_5_x_chance_and_above_chance_for_few_classes():
    assert failed_below(10) == 0.5 and failed_below(100) == 0.05  # Fashion-MNIST and CIFAR-10; CIFAR-100
    assert failed_below(2) == 0.75 and failed_below(4) == 0.625  # 5 x chance is out of reach: halfway to 1
    assert all(1 / c < failed_below(c) < 1 for c in range(2, 1000))
