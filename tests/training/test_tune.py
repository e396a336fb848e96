"""`nin tune`: the search space and its file, the study's total across restarts and processes, pruning, and
best.toml. Trials are tiny (width 4, 128 training images, 2 epochs)."""

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import require
from nin.cli import main
from nin.config import load_preset
from nin.training.space import default_space, read_space, to_toml

optuna = require("optuna")

TINY = ["--preset", "fast", "--width", "4", "--train-limit", "128", "--val-split", "128", "--test-limit", "64",
        "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]  # fmt: skip
SPACE = "[lr]\nlow = 0.05\nhigh = 0.2\nlog = true\n\n[label_smoothing]\nlow = 0.0\nhigh = 0.2\n"


def study_of(out: Path) -> "optuna.Study":
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def states(out: Path) -> list[str]:
    return [t.state.name for t in study_of(out).get_trials()]


def test_default_space_fits_the_preset_and_round_trips_through_its_file(tmp_path):
    base = load_preset("fast")
    space = default_space(base, fixed={"batch_size"})
    assert "batch_size" not in space and space["width"].choices == (8, 16, 32) and space["epochs"].high == 4
    assert default_space(load_preset("mnist"))["augment"].choices == ("none", "crop")  # digits are not mirrored
    assert "width" not in default_space(load_preset("d2l"))  # width sizes nin-bn alone
    path = tmp_path / "space.toml"
    path.write_text(to_toml({k: p.to_dict() for k, p in space.items()}))
    assert read_space(path, base) == space


@pytest.mark.parametrize(
    "text, says",
    [
        ("[lr\nlow = 1", "not valid TOML"),
        ("", "no setting to search"),
        ("[learning_rate]\nlow = 0.1\nhigh = 0.2", "[learning_rate]: not a setting of nin train"),
        ("[lr]\nlow = 0.2\nhigh = 0.1", "[lr]: low and high are numbers with low < high"),
        ("[lr]\nlow = 0\nhigh = 0.1\nlog = true", "[lr]: a log scale needs low > 0"),
        ("[lr]\nlow = -1.0\nhigh = 0.1", "lr must be positive"),
        ("[image_size]\nlow = 1.5\nhigh = 64", "image_size should be int"),
        ('[augment]\nchoices = ["sideways"]', "augment must be one of"),
        ("[dropout]\nchoices = []", "choices = [...] is a non-empty list"),
        ("[lr]\nlow = 0.1\nhigh = 0.2\nstep = 0.01", "unknown key(s) step"),
        ("[val_split]\nlow = 100\nhigh = 200", "[val_split]: the validation images every trial is scored on"),
        ("[width]\nchoices = [4, 8]", "--width is also given as a flag"),
    ],
)
def test_a_bad_space_file_is_one_clear_error_before_any_trial(tmp_path, capsys, text, says):
    space = tmp_path / "space.toml"
    space.write_text(text)
    out = tmp_path / "study"
    assert main(["tune", *TINY, "--trials", "2", "--space", str(space), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nin: error: --space {space}") and says in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_folder_without_test_images_is_refused_before_any_trial(tmp_path, capsys):
    (tmp_path / "photos" / "train" / "cat").mkdir(parents=True)
    args = ["--dataset", "folder", "--data-dir", str(tmp_path / "photos"), "--trials", "2"]
    assert main(["tune", *args, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nin: error: {tmp_path / 'photos'}: no test/ (or val/) folder") and err.count("\n") == 1


def test_a_trial_whose_process_is_gone_is_marked_failed(tmp_path):
    from nin.training.tune import fail_dead_trials

    s = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid in (int(gone.stdout), os.getpid()):  # killed, and alive (this process)
        trial = s.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    assert fail_dead_trials(s) == [0]
    assert [t.state.name for t in s.get_trials()] == ["FAIL", "RUNNING"]


@pytest.mark.slow
def test_the_same_command_finishes_the_remainder_and_best_toml_trains(tmp_path, capsys, monkeypatch):
    import torch

    from nin.training import tune as tune_module

    threads = torch.get_num_threads()
    monkeypatch.setattr(tune_module, "usable_cores", lambda: threads + 1)  # the trials run on one thread more
    space, out = tmp_path / "space.toml", tmp_path / "study"
    space.write_text(SPACE)
    command = ["tune", *TINY, "--trials", "2", "--space", str(space), "--pruner", "none", "--out", str(out)]
    assert main(command) == 0
    assert torch.get_num_threads() == threads  # and this process has its own count again
    first = {n: (out / "trials" / n / "run.json").stat().st_mtime_ns for n in ("0000", "0001")}
    capsys.readouterr()
    command[command.index("--trials") + 1] = "3"  # the total: one more
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "2 of 3 trials done or running; 1 to go" in printed and "trial 0002 complete" in printed
    assert not [line for line in printed.splitlines() if line.startswith(("trial 0000", "trial 0001"))]
    assert states(out) == ["COMPLETE"] * 3
    assert {n: (out / "trials" / n / "run.json").stat().st_mtime_ns for n in first} == first  # not trained again
    assert main(command) == 0 and "nothing left to run" in capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text())
    assert result["states"] == {"complete": 3} and set(result["best"]["params"]) == {"lr", "label_smoothing"}
    fast = load_preset("fast")
    assert (out / "tune.png").stat().st_size > 0 and read_space(out / "space.toml", fast) == read_space(space, fast)
    # other settings are another study: said, not mixed in
    assert main([*command, "--momentum", "0.5"]) == 2
    assert "was started with other settings (config momentum: 0.9 there, 0.5 here)" in capsys.readouterr().err
    # best.toml: the winner on all the training data (here cut short by flags, as any train flag may)
    best = out / "best.toml"
    run = tmp_path / "best-run"
    assert main(["train", "--config", str(best), "--train-limit", "128", "--epochs", "1", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["val_split"] == 0 and config["lr"] == result["best"]["params"]["lr"] and config["width"] == 4


@pytest.mark.slow
def test_pruning_ends_trials_early_from_their_validation_curve(tmp_path, capsys):
    space, out = tmp_path / "space.toml", tmp_path / "study"
    space.write_text("[lr]\nchoices = [0.0001, 0.2]\n")  # one learns within an epoch, the other does not
    assert main(["tune", *TINY, "--trials", "4", "--space", str(space), "--pruner", "hyperband", "--out",
                 str(out)]) == 0  # fmt: skip
    pruned = [t for t in study_of(out).get_trials() if t.state.name == "PRUNED"]
    assert pruned, capsys.readouterr().out
    for t in pruned:  # stopped after its first epoch, its run saved as it stood
        run = out / "trials" / f"{t.number:04d}"
        assert t.last_step == 1 and len((run / "metrics.jsonl").read_text().splitlines()) == 1
        assert json.loads((run / "run.json").read_text())["sessions"][-1]["status"] == "pruned"
    assert f"trial {pruned[0].number:04d} pruned after epoch 1" in capsys.readouterr().out


@pytest.mark.slow
def test_processes_on_one_study_share_the_trials_and_stop_together(tmp_path):
    space, out = tmp_path / "space.toml", tmp_path / "study"
    space.write_text(SPACE)
    command = [sys.executable, "-m", "nin", "tune", *TINY, "--trials", "3", "--space", str(space), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([*command, *jobs], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env, cwd=tmp_path) for jobs in (["--jobs", "2"], [])]  # fmt: skip
    results = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in results]
    trials = study_of(out).get_trials()
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 3  # the total, exactly, however the processes raced
    assert all(t.user_attrs.get("surplus") for t in trials if t not in counted)  # a late ask, and nothing else
    assert len({t.user_attrs["pid"] for t in counted}) >= 2  # the work was shared
    assert sorted(p.name for p in (out / "trials").iterdir() if p.is_dir()) == [f"{t.number:04d}" for t in counted]


def test_importances_from_10_complete_trials_on_and_the_picture_draws_them(tmp_path):
    from nin.plots import plot_tune
    from nin.training.tune import importances

    s = optuna.create_study(direction="maximize")
    lr = optuna.distributions.FloatDistribution(0.01, 1.0, log=True)
    width = optuna.distributions.CategoricalDistribution([8, 16])
    for i in range(12):
        if i == 9:
            assert importances(s) == {}  # 9 complete: no top 10% to set against the rest
        params = {"lr": 0.01 * 1.5**i, "width": (8, 16)[i % 2]}
        s.add_trial(optuna.trial.create_trial(params=params, distributions={"lr": lr, "width": width}, value=i / 12))
    found = importances(s)
    assert set(found) == {"lr", "width"} and found["lr"] > found["width"]  # the score follows lr alone
    history = [{"trial": i, "state": "complete", "val_acc": i / 12, "last_val_acc": i / 12} for i in range(12)]
    plot_tune(history + [{"trial": 12, "state": "pruned", "val_acc": None, "last_val_acc": 0.1}], found,
              tmp_path / "tune.png", "study")  # fmt: skip
    assert (tmp_path / "tune.png").stat().st_size > 0


@pytest.mark.parametrize(
    "lost",
    [
        "(sqlite3.OperationalError) table trials already exists",
        "(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num",
    ],
)
def test_two_processes_creating_one_new_database_both_open_it(tmp_path, monkeypatch, lost):
    """Two `nin tune` processes starting on a new SQLite file race to create its tables and its schema version;
    the loser's error must not end it (both seen in CI runs). Any other failure to open still is one clear error."""
    from nin.training import tune

    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError(lost)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    study = tune.Study(tmp_path, tune.default_storage(tmp_path), "s", load_preset("fast"), {}, trials=1)
    assert tune.load(study).study_name == "s" and len(calls) == 2
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(tune.NinError, match="cannot open it \\(no\\)"):
        tune.load(study)


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_a_folder_study_names_its_folder_in_the_command_that_retrains_the_best(tmp_path, capsys):
    """best.toml holds settings, not the data's folder (a flag): the command tune prints and writes into best.toml
    gives --data-dir too, and runs as printed."""
    from PIL import Image

    photos, out = tmp_path / "my photos", tmp_path / "study"
    for split, n in (("train", 24), ("test", 4)):
        for c, shade in (("cat", 40), ("dog", 200)):
            (photos / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 12), (shade + i, shade, 255 - shade)).save(photos / split / c / f"{i}.png")
    tiny = ["--preset", "fast", "--width", "4", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--precision", "fp32", "--image-size", "8", "--resize", "8"]  # fmt: skip
    command = ["tune", "--dataset", "folder", "--data-dir", str(photos), *tiny, "--trials", "1",
               "--space", str(tmp_path / "space.toml"), "--pruner", "none", "--out", str(out)]  # fmt: skip
    (tmp_path / "space.toml").write_text(SPACE)
    assert main(command) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    retrain = said.split("; ", 1)[1].removesuffix(" trains the best on all the training data")
    assert retrain == f"nin train --config {out / 'best.toml'} --data-dir '{photos}'"  # quoted: the space
    assert f"# {retrain} trains it on all the training data." in (out / "best.toml").read_text()
    run = tmp_path / "best-run"
    assert main([*shlex.split(retrain)[1:], "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["dataset"] == "folder"
