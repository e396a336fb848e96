"""Exact resume: killed, stopped or interrupted runs continue to the same weights, bit for bit."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from nin.api import load
from nin.cli import main
from nin.errors import NinError

pytestmark = pytest.mark.slow  # training processes killed and resumed

# 6 steps per epoch, dropout and augmentation on (their RNG state must survive the restart), an lr
# schedule (a function of the step), a validation split, a checkpoint every 2 steps
RUN = ["--preset", "quick", "--resize", "67",
       "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--momentum", "0.9",
       "--init", "kaiming", "--dropout", "0.5", "--train-limit", "384", "--test-limit", "128",
       "--device", "cpu", "--precision", "fp32", "--checkpoint-every", "2", "--schedule", "onecycle",
       "--warmup", "0.3", "--augment", "flip-crop", "--label-smoothing", "0.1", "--weight-decay", "5e-4",
       "--val-split", "128"]  # fmt: skip


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nin", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_mid_epoch_checkpoint(process: subprocess.Popen, path, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists():
            position = torch.load(path, weights_only=True)["position"]
            if position["step"] > 0:
                return position
        time.sleep(0.02)
    raise TimeoutError("no mid-epoch checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in a process of its own like the others."""
    out = tmp_path_factory.mktemp("reference")
    process = start(*RUN, "--out", str(out))
    assert process.wait() == 0, process.communicate()
    return out


def weights(run) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def assert_same_run(run, reference) -> None:
    ours, theirs = weights(run), weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "weights differ from the uninterrupted run"
    strip = lambda r: [{k: v for k, v in json.loads(line).items() if "sec" not in k}  # noqa: E731
                       for line in (r / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert strip(run) == strip(reference)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, reference):
    process = start(*RUN, "--out", str(tmp_path))
    position = wait_for_mid_epoch_checkpoint(process, tmp_path / "checkpoint.pt")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert position["step"] in (2, 4)
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert_same_run(tmp_path, reference)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_gracefully_with_a_checkpoint(tmp_path, reference, signum, code):
    process = start(*RUN, "--out", str(tmp_path))
    wait_for_mid_epoch_checkpoint(process, tmp_path / "checkpoint.pt")
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume" in err and "Traceback" not in err
    # the checkpoint is the one written at the stop (mid-epoch, or after the epoch's last step)
    stopped = re.search(r"at epoch (\d+), step (\d+)|after epoch (\d+)", err)
    expected = (int(stopped[1]) - 1, int(stopped[2])) if stopped[1] else (int(stopped[3]), 0)
    position = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["position"]
    assert (position["epoch"], position["step"]) == expected
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert_same_run(tmp_path, reference)


def test_resume_a_finished_run_does_nothing(reference, capsys):
    before = (reference / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(reference)]) == 0
    assert "has finished all 2 epochs: nothing left to train" in capsys.readouterr().out
    assert (reference / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_other_settings(reference, capsys):
    assert main(["train", "--resume", str(reference), "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err


def test_resume_needs_a_run_directory(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_bytes_in_a_checkpoint_give_one_clear_error(reference, tmp_path, where):
    data = bytearray((reference / "checkpoint.pt").read_bytes())
    at = int(len(data) * where)
    data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
    damaged = tmp_path / "checkpoint.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(NinError, match=r"checkpoint\.pt: (not a readable|damaged) nin checkpoint"):
        load(damaged)


def test_a_changed_weight_fails_the_checksum(reference, tmp_path):
    state = torch.load(reference / "checkpoint.pt", weights_only=True)
    next(iter(state["model"].values())).view(-1)[0] += 1  # a well-formed file whose contents were altered
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(NinError, match=r"damaged nin checkpoint \(its contents do not match their SHA-256\)"):
        load(tmp_path)


def test_truncated_checkpoint_in_resume(tmp_path, reference, capsys):
    (tmp_path / "checkpoint.pt").write_bytes((reference / "checkpoint.pt").read_bytes()[:1000])
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a readable nin checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, reference):
    """A child process dies (SIGKILL) half-way through writing; the old checkpoint stays intact."""
    from nin import io

    target = tmp_path / "checkpoint.pt"
    target.write_bytes((reference / "checkpoint.pt").read_bytes())
    pid = os.fork()
    if pid == 0:  # child: start an atomic write, then die in the middle of it
        real_fsync = os.fsync
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL) or real_fsync(fd)
        io.atomic_write_bytes(target, b"x" * 10_000_000)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert target.read_bytes() == (reference / "checkpoint.pt").read_bytes()
