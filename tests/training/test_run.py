"""The run directory: one owner of a run's files, a --force that keeps nothing of the old run, and the
run record (run.json) that says how each run was made."""

import importlib
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import SHORT, stopped_after_epoch_1
from nin.cli import main
from nin.config import Config
from nin.errors import NinError
from nin.training.loop import train
from nin.training.rundir import FILES, RunDir

train_module = importlib.import_module("nin.training.loop")

TINY = ["train", "--preset", "quick", "--epochs", "1", "--resize", "67", "--train-limit", "64", "--test-limit", "32",
        "--device", "cpu", "--precision", "fp32"]  # fmt: skip


def died_in_its_first_step(path: Path) -> None:
    """The run record of a run killed before its first checkpoint, as nin writes it."""
    with pytest.raises(KeyboardInterrupt), RunDir(path).session("fp32", 1, "cpu", []):
        raise KeyboardInterrupt


def old_run(path: Path) -> dict[str, bytes]:
    """A folder holding every file a run can have (as if trained, evaluated, compared and reported; its run
    record a real one), and a file of the user's own. Returns the folder's contents."""
    path.mkdir()
    for key, (name, _) in FILES.items():
        if key != "record":
            (path / name).write_text("old")
    died_in_its_first_step(path)
    (path / "notes.txt").write_text("mine")
    return contents(path)


def contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_force_replaces_every_file_of_the_old_run_and_keeps_the_users(tmp_path, capsys):
    run = tmp_path / "run"
    before = old_run(run)
    assert main([*TINY, "--out", str(run)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert contents(run) == before  # refused: nothing touched

    assert main([*TINY, "--out", str(run), "--force"]) == 0
    kept = {"checkpoint.pt", "config.json", "curves.png", "metrics.jsonl", "run.json", "notes.txt"}
    assert {p.name for p in run.iterdir()} == kept  # the old comparison, report, maps and matrix are gone
    assert all((run / name).read_bytes() != b"old" for name in kept - {"notes.txt"})
    assert (run / "notes.txt").read_text() == "mine"
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--test-limit", "32", "--out", str(page)]) == 0
    assert "classic CNNs" not in page.read_text()  # no old comparison passes for the new run's


@pytest.mark.parametrize("bad", [["--resize", "20"], ["--data-dir", "nowhere"]])
def test_force_with_bad_settings_or_data_removes_nothing(tmp_path, capsys, bad):
    run = tmp_path / "run"
    before = old_run(run)
    assert main([*TINY, "--out", str(run), "--force", *bad]) == 2
    assert "nin: error:" in capsys.readouterr().err
    assert contents(run) == before


def test_force_refuses_a_folder_that_holds_no_nin_run(tmp_path, capsys):
    """The issue's try: a folder with the user's own config.json and report.html is not a run to replace."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}')
    (folder / "report.html").write_text("<p>my report</p>")
    before = contents(folder)
    assert main([*TINY, "--out", str(folder), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error:") and "holds no nin run" in err and "choose another --out" in err
    assert contents(folder) == before
    # files named as a run's but not nin's: a run.json that is no run record, a checkpoint.pt of another program
    for record, checkpoint in (("{}", b"not torch"), ('{"sessions": []}', b""), ("[1]", None), ("{", None)):
        (folder / "run.json").write_text(record)
        if checkpoint is not None:
            (folder / "checkpoint.pt").write_bytes(checkpoint)
        else:
            torch.save({"model": {}}, folder / "checkpoint.pt")
        before = contents(folder)
        with pytest.raises(NinError, match="holds no nin run"):
            RunDir.for_new_run(folder, force=True)
        assert contents(folder) == before


def test_force_replaces_a_run_that_died_before_its_first_checkpoint(tmp_path):
    died_in_its_first_step(tmp_path)  # a run.json and nothing else: still a nin run
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    RunDir.for_new_run(tmp_path, force=True).clear()
    assert contents(tmp_path) == {"notes.txt": b"mine"}


def test_run_record_has_a_session_per_process_that_worked_on_the_run(tmp_path, monkeypatch):
    """Stopped by SIGTERM after epoch 1, then resumed: two sessions, each saying how it ended."""
    config = Config(**{**SHORT, "train_limit": 64, "test_limit": 100})
    stopped_after_epoch_1(monkeypatch, lambda: train(config, tmp_path))
    train(config, tmp_path, resume=True)
    first, second = RunDir(tmp_path).record()["sessions"]
    assert (first["status"], first["epochs_before"], first["epochs_after"]) == ("stopped", 0, 1)
    assert (second["status"], second["epochs_before"], second["epochs_after"]) == ("finished", 1, 2)
    for s in (first, second):
        assert s["precision"] == "fp32" and s["world_size"] == 1 and s["device"] == "cpu"
        assert s["torch"] == torch.__version__ and s["threads"] == torch.get_num_threads()
        assert s["started"] <= s["finished"] and s["wall_seconds"] > 0
        assert {"cpu", "cpu_count", "avx2", "avx512_bf16", "amx", "python", "nin_version", "command"} <= set(s)
        flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
        assert s["amx"] == ("amx_bf16" in flags) and s["avx2"] == ("avx2" in flags)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)  # fmt: skip
    if head.returncode == 0 and (Path(__file__).parents[2] / ".git").exists():
        assert first["nin_commit"].rstrip("+") == head.stdout.strip()


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
@pytest.mark.parametrize("precision, expected", [(None, "fp32"), ("auto", "bf16")])
def test_d2l_preset_trains_in_fp32_even_where_bf16_is_native(tmp_path, monkeypatch, precision, expected):
    """The seed's numerics on every device: even a CPU with native bf16 runs --preset d2l in fp32, and
    records it; --precision auto is one flag away."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    flags = ["--precision", precision] if precision else []
    args = ["train", "--preset", "d2l", "--resize", "67", "--epochs", "1", "--batch-size", "8", "--train-limit",
            "8", "--test-limit", "8", "--device", "cpu", "--out", str(tmp_path), *flags]  # fmt: skip
    assert main(args) == 0
    (session,) = RunDir(tmp_path).record()["sessions"]
    assert session["precision"] == expected


def test_a_damaged_record_is_one_clear_error(tmp_path):
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(NinError, match="run.json: not a nin run record"):
        RunDir(tmp_path).record()
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(NinError, match="run.json: not valid JSON"):
        RunDir(tmp_path).record()
