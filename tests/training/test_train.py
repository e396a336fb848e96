import importlib
import json
import math
import os
import signal

import pytest
import torch
from PIL import Image

from helpers import SHORT, stopped_after_epoch_1
from nin.api import load
from nin.config import Config
from nin.errors import NinError
from nin.training import step as step_module
from nin.training.checkpoint import load_checkpoint
from nin.training.guards import Stopped, chance_plateau
from nin.training.loop import learning_rate, train
from nin.training.rundir import RunDir
from nin.training.step import evaluate_accuracy

train_module = importlib.import_module("nin.training.loop")


def test_short_training_lowers_the_loss_and_beats_chance(trained_run):
    history = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"] < math.log(10)
    # chance is 0.1; on 1,000 test images 0.2 is over 10 standard deviations above it
    assert history[-1]["test_acc"] > 0.2
    for m in history:
        assert {"epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec", "epoch_seconds"} <= set(m)
        assert m["examples_per_sec"] > 0 and m["epoch_seconds"] > 0


def test_run_directory_contents(trained_run):
    assert sorted(p.name for p in trained_run.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "curves.png",
        "metrics.jsonl",
        "run.json",
    ]
    assert Config(**json.loads((trained_run / "config.json").read_text())) == Config(**SHORT)
    with Image.open(trained_run / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_checkpoint_round_trip(trained_run):
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)  # loads without unpickling code
    assert state["position"] == {"epoch": 2, "step": 0, "sums": [0.0, 0, 0, 0.0], "world_size": 1}
    assert state["config"] == Config(**SHORT).to_dict()
    assert set(state) >= {"model", "optimizer", "rng", "metrics"}
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9
    run = load(trained_run)
    net, config = run.model, run.config
    assert not net.training and config == Config(**SHORT)
    for key, value in state["model"].items():
        assert torch.equal(net.state_dict()[key], value)
    assert load_checkpoint(trained_run / "checkpoint.pt")["metrics"][-1]["epoch"] == 2


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_same_seed_same_run(tmp_path):
    config = Config(**{**SHORT, "epochs": 1, "train_limit": 256, "test_limit": 100})
    a = train(config, tmp_path / "a")
    b = train(config, tmp_path / "b")
    strip = [{k: v for k, v in m.items() if "sec" not in k} for m in a]
    assert strip == [{k: v for k, v in m.items() if "sec" not in k} for m in b]


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
@pytest.mark.parametrize("hook, nth", [("sync", 1), ("evaluate_accuracy", 1), ("sync", 2)])
def test_a_signal_at_an_epochs_end_stops_after_its_checkpoint(tmp_path, monkeypatch, hook, nth):
    """SIGTERM in an epoch's last step (sync) or in its evaluation: the epoch is finished and saved first,
    then the run stops (in the final epoch it just finishes); resumed, it ends as an uninterrupted run."""
    config = Config(**{**SHORT, "train_limit": 64, "test_limit": 100})  # one step per epoch
    reference = train(config, tmp_path / "reference")
    real, calls = getattr(train_module, hook), []

    def signalled(*args):
        calls.append(1)
        if len(calls) == nth:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(train_module, hook, signalled)
    run = tmp_path / "run"
    if nth == 1:
        with pytest.raises(Stopped, match=r"stopped by SIGTERM after epoch 1; checkpoint written"):
            train(config, run)
        position = torch.load(run / "checkpoint.pt", weights_only=True)["position"]
        assert (position["epoch"], position["step"]) == (1, 0)
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
        history = train(config, run, resume=True)
    else:
        history = train(config, run)
    strip = lambda h: [{k: v for k, v in m.items() if "sec" not in k} for m in h]  # noqa: E731
    assert strip(history) == strip(reference)


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A loss that turns NaN in epoch 2 stops training; epoch 1's checkpoint stays as it was."""
    real, calls = step_module.F.cross_entropy, []

    def poisoned(y_hat, y, **kwargs):
        calls.append(1)
        loss = real(y_hat, y, **kwargs)
        return loss * float("nan") if len(calls) > 5 else loss  # 4 steps per epoch: step 2 of epoch 2

    monkeypatch.setattr(step_module.F, "cross_entropy", poisoned)
    config = Config(**{**SHORT, "epochs": 3, "train_limit": 256, "test_limit": 100})
    with pytest.raises(
        NinError, match=r"loss became nan at epoch 2, step 2.*last good checkpoint is kept.*--lr 0\.0025"
    ):
        train(config, tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["position"]["epoch"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_huge_learning_rate_diverges_with_a_clear_message(tmp_path):
    config = Config(**{**SHORT, "lr": 1e4, "epochs": 1, "train_limit": 512, "test_limit": 100})
    with pytest.raises(NinError, match="training diverged.*no checkpoint had been written yet.*lower learning rate"):
        train(config, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_stuck_at_chance_warns(tmp_path, capsys):
    # the seed's Xavier init with a tiny learning rate: the loss sits at ln(10) for the whole epoch
    config = Config(**{**SHORT, "init": "xavier", "momentum": 0.0, "lr": 1e-5, "epochs": 1,
                       "train_limit": 256, "test_limit": 100})  # fmt: skip
    train(config, tmp_path)
    assert "stayed at ln(10) = 2.303" in capsys.readouterr().err


def test_chance_plateau_tells_stuck_from_slow_start():
    # the seed recipe's epochs on this CPU: epoch 1 stuck, epoch 2 still at ln(10) but learning
    assert "warning: the training loss stayed at ln(10)" in chance_plateau(2.304, 0.101, 0.100)
    assert "has started to learn" in chance_plateau(2.300, 0.127, 0.161)
    assert chance_plateau(2.0, 0.3, 0.4) is None  # learning
    assert chance_plateau(2.300, 0.2, 0.1) is None  # training accuracy says it learns


def test_resize_too_small_is_refused_before_any_work(tmp_path):
    with pytest.raises(NinError, match="resize 50 is too small.*smallest input it accepts is 67x67"):
        train(Config(resize=50), tmp_path)
    assert not tmp_path.joinpath("config.json").exists()


def test_evaluate_accuracy_counts_correct_predictions():
    from nin.data.batches import Batches

    class Fixed(torch.nn.Module):  # predicts class 3 for every image
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()

    labels = torch.tensor([3, 3, 1, 3, 0])
    batches = Batches(torch.zeros(5, 28, 28, dtype=torch.uint8), labels, 2, 28, torch.device("cpu"))
    assert evaluate_accuracy(Fixed(), batches) == 3 / 5


def test_onecycle_warms_up_then_decays_to_zero():
    config = Config(lr=0.4, schedule="onecycle", warmup=0.25)
    lrs = [learning_rate(config, step, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.4 / 25) and lrs[24] == pytest.approx(0.4) and max(lrs) == pytest.approx(0.4)
    assert all(a < b for a, b in zip(lrs[:24], lrs[1:25])) and all(a > b for a, b in zip(lrs[25:], lrs[26:]))
    assert lrs[-1] == pytest.approx(0.4 / 75)  # the last step still moves; the next would be 0
    assert {learning_rate(Config(lr=0.4), step, 100) for step in range(100)} == {0.4}
    # a warmup that is not a whole number of steps still peaks at lr, never above it
    for warmup, steps in ((0.3, 5), (0.2, 17), (0.35, 3)):
        lrs = [learning_rate(Config(lr=0.4, schedule="onecycle", warmup=warmup), s, steps) for s in range(steps)]
        assert max(lrs) == pytest.approx(0.4) and min(lrs) > 0


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_nin_bn_with_the_new_ingredients_learns_and_reports_val_acc(tmp_path, capsys):
    # the ingredients of the fast preset on 2,048 images of 28x28 and a small width: seconds on a CPU
    config = Config(arch="nin-bn", width=16, resize=28, epochs=2, batch_size=64, lr=0.2, momentum=0.9,
                    weight_decay=5e-4, schedule="onecycle", warmup=0.2, label_smoothing=0.1, augment="flip-crop",
                    init="kaiming", dropout=0.0, train_limit=2048, test_limit=1000, val_split=1000,
                    device="cpu", precision="fp32")  # fmt: skip
    history = train(config, tmp_path)
    assert "2048 training / 1000 validation / 1000 test images of fashion-mnist at 28x28" in capsys.readouterr().out
    assert [set(m) >= {"val_acc", "test_acc"} for m in history] == [True, True]
    assert history[-1]["val_acc"] > 0.6 and history[-1]["test_acc"] > 0.6  # chance is 0.1
    run = load(tmp_path)
    net, loaded = run.model, run.config
    assert loaded == config and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_a_loss_explosion_stops_the_run_before_it_turns_nan(tmp_path, monkeypatch):
    real = step_module.F.cross_entropy
    monkeypatch.setattr(step_module.F, "cross_entropy", lambda *a, **k: real(*a, **k) * 50)  # about 115 x batch
    config = Config(**{**SHORT, "epochs": 1, "train_limit": 256, "test_limit": 100})
    message = r"loss jumped to \d+\.\d \(chance level is ln\(10\) = 2\.30\) at epoch 1, step 1"
    with pytest.raises(NinError, match=message):
        train(config, tmp_path)


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_auto_resume_starts_continues_completes_and_refuses(tmp_path, monkeypatch, capsys):
    """--auto-resume (what torchrun's restarts need): nothing there -> start; an unfinished run with these
    settings -> continue exactly; other settings -> one clear error; a finished run -> a success that says
    so, and writes the metrics.jsonl and curves.png a crash after its last checkpoint left out."""
    config = Config(**{**SHORT, "train_limit": 64, "test_limit": 100})
    reference = train(config, tmp_path / "reference")
    run = tmp_path / "run"
    stopped_after_epoch_1(monkeypatch, lambda: train(config, run, auto_resume=True))  # nothing there: starts
    with pytest.raises(NinError, match=r"other settings \(lr 0\.005 there, 0\.01 here\).*--force"):
        train(Config(**{**config.to_dict(), "lr": 0.01}), run, auto_resume=True)
    history = train(config, run, auto_resume=True)  # continues
    strip = lambda h: [{k: v for k, v in m.items() if "sec" not in k} for m in h]  # noqa: E731
    assert strip(history) == strip(reference)
    assert all(torch.equal(a, b) for a, b in zip(weights(run), weights(tmp_path / "reference")))
    metrics = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(metrics.splitlines(keepends=True)[0])  # killed after the last checkpoint
    (run / "curves.png").unlink()
    checkpoint = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert train(config, run, auto_resume=True) == history
    out = capsys.readouterr().out
    assert "has finished all 2 epochs: nothing left to train" in out and "training on" not in out
    assert "wrote metrics.jsonl and curves.png from the checkpoint" in out
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "curves.png").stat().st_size > 0
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    last = RunDir(run).record()["sessions"][-1]
    assert (last["status"], last["epochs_before"], last["epochs_after"]) == ("finished", 2, 2)
    train(config, run, auto_resume=True)  # nothing missing: nothing written
    assert "wrote" not in capsys.readouterr().out


def test_auto_resume_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path, monkeypatch):
    config = Config(**{**SHORT, "epochs": 1, "train_limit": 64, "test_limit": 100})
    with monkeypatch.context() as m:  # dies in its first step, before any checkpoint
        m.setattr(train_module, "train_step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path, auto_resume=True)
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "config.json").exists()
    train(config, tmp_path, auto_resume=True)
    first, second = RunDir(tmp_path).record()["sessions"]  # the record of the same run goes on
    assert (first["status"], second["status"]) == ("interrupted", "finished")
    other = tmp_path / "other"  # no run, but a file of the user's: not a folder to start a run in
    other.mkdir()
    (other / "mine.txt").write_text("mine")
    with pytest.raises(NinError, match="not empty"):
        train(config, other, auto_resume=True)
    assert [p.name for p in other.iterdir()] == ["mine.txt"]
    # the user's own config.json (even one with these settings) and report.html, no run record: not a run
    (other / "config.json").write_text(json.dumps(config.to_dict()))
    (other / "report.html").write_text("mine")
    with pytest.raises(NinError, match="holds no nin run"):
        train(config, other, auto_resume=True)
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "mine.txt", "report.html"]
    assert (other / "report.html").read_text() == "mine"


def weights(run) -> list:
    return list(torch.load(run / "checkpoint.pt", weights_only=True)["model"].values())
