"""torchrun + DDP on CPU (gloo): two processes train to the weights of one, on one machine or as two
nodes; a killed worker is restarted and resumes by itself; SyncBatchNorm; a hung rank times out."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nin.cli import main
from nin.config import from_dict
from nin.training.loop import init_model

pytestmark = pytest.mark.slow  # torchrun launches

# Plain SGD (d2l's optimizer) and dropout 0: each rank draws its own dropout masks, which cannot match
# the masks one process draws for the whole batch; everything else (data order, batch split, gradient
# average) is exact. 160 images in batches of 96: per epoch a full batch split 48 + 48 and a last batch
# of 64 split 32 + 32.
RUN = ["--preset", "quick", "--resize", "67",
       "--epochs", "2", "--batch-size", "96", "--lr", "0.01", "--momentum", "0",
       "--init", "kaiming", "--dropout", "0", "--train-limit", "160", "--test-limit", "200",
       "--device", "cpu", "--precision", "fp32"]  # fmt: skip


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def nin_train(nproc: int, out, *extra: str, run: list[str] = RUN) -> subprocess.CompletedProcess:
    """`nin train` under torchrun with `nproc` processes; with 1, in this process (the same code, without a
    process's torch import)."""
    args = ["train", *run, "--out", str(out), *extra]
    if nproc == 1:
        return subprocess.CompletedProcess(args, main(args), "", "")
    return subprocess.run([*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "nin", *args],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


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


def test_batch_size_must_divide(tmp_path, monkeypatch, capsys):
    """Checked before the ranks meet, so each rank of `torchrun --nproc-per-node=2` ends at once with this."""
    monkeypatch.setenv("WORLD_SIZE", "2")  # no RANK nor MASTER_ADDR: meeting the other rank would fail
    assert main(["train", *RUN, "--batch-size", "95", "--out", str(tmp_path / "run")]) == 2
    assert "--batch-size 95 (the global batch) does not divide among 2 processes" in capsys.readouterr().err


def test_resume_with_another_number_of_processes_is_refused(runs, capsys):
    """Each rank draws its own dropout masks and keeps its own RNG: an exact resume needs the same count."""
    _, two, _ = runs
    before = (two / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(two)]) == 2
    err = capsys.readouterr().err
    assert "written by 2 process(es), and this run has 1" in err
    assert f"torchrun --nproc_per_node=2 -m nin train --resume {two}" in err
    assert (two / "checkpoint.pt").read_bytes() == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_train_as_one_two_process_launch(runs, tmp_path):
    """Two torchrun launches, one process each, meeting at a c10d rendezvous on 127.0.0.1 (what two
    machines run, each with --node-rank), end with the weights of one 2-process launch, bit for bit."""
    _, two, _ = runs
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun sets for 2 processes on one node
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=nin-test",
                               f"--rdzv-conf=is_host={int(rank == 0)}", "--max-restarts=0",
                               "-m", "nin", "train", *RUN, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in (0, 1)]  # fmt: skip
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    ours, theirs = weights(out), weights(two)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # the rendezvous gives one of the two processes rank 0; it alone prints
    assert sum("training on cpu x 2 processes" in stdout for stdout, _ in results) == 1


# 6 steps of 96 per epoch, a checkpoint every 2: a worker can be killed mid-epoch after a checkpoint
ELASTIC = [*RUN[: RUN.index("--train-limit")], "--train-limit", "576", "--test-limit", "200", "--device", "cpu",
           "--precision", "fp32", "--checkpoint-every", "2", "--epochs", "2"]  # fmt: skip


def worker(agent: int, rank: int) -> int:
    """The pid of the torchrun worker of `rank` started by the agent process `agent`."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise LookupError(f"no worker of rank {rank} under {agent}")


def wait_for_mid_epoch_checkpoint(process: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if torch.load(path, weights_only=True)["position"]["step"] > 0:
                return
        except (OSError, RuntimeError, EOFError):
            pass
        time.sleep(0.02)
    raise TimeoutError("no mid-epoch checkpoint appeared")


@pytest.fixture(scope="module")
def elastic_reference(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run of ELASTIC."""
    out = tmp_path_factory.mktemp("elastic") / "reference"
    result = nin_train(2, out, run=ELASTIC)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def elastic(out: Path, *flags: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, "--standalone", "--nproc-per-node=2", "--monitor-interval=0.2", *flags,
                             "-m", "nin", "train", *ELASTIC, "--out", str(out), "--auto-resume"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def test_a_killed_worker_is_restarted_and_the_run_resumes_by_itself(elastic_reference, tmp_path):
    """torchrun --max-restarts=1 with --auto-resume: SIGKILL one worker mid-epoch, after a checkpoint;
    torchrun restarts both with the same command line, and the run ends with the weights of the
    uninterrupted 2-process run, bit for bit; the run record logs the restart."""
    out = tmp_path / "run"
    agent = elastic(out, "--max-restarts=1")
    wait_for_mid_epoch_checkpoint(agent, out / "checkpoint.pt")
    os.kill(worker(agent.pid, 1), signal.SIGKILL)
    stdout, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]
    ours, theirs = weights(out), weights(elastic_reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["elastic_restart"] for s in sessions] == [0, 1]
    assert sessions[0]["status"] in ("died", "failed") and sessions[1]["status"] == "finished"
    assert sessions[1]["epochs_after"] == 2 and "resuming after epoch" in stdout


def test_a_restart_after_the_last_checkpoint_ends_0_and_completes_the_run(elastic_reference, tmp_path):
    """A crash between the last checkpoint and the metrics.jsonl / curves.png writes: the job's restart (the
    same command, --auto-resume) finds a finished run, says so once, writes those files from the checkpoint
    and ends 0; the checkpoint is untouched and the run record gains a session that trained nothing."""
    out = tmp_path / "run"
    shutil.copytree(elastic_reference, out)
    metrics = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(metrics.splitlines(keepends=True)[0])
    (out / "curves.png").unlink()
    checkpoint = (out / "checkpoint.pt").read_bytes()
    agent = elastic(out, "--max-restarts=0")
    stdout, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]
    assert stdout.count("has finished all 2 epochs: nothing left to train") == 1, stdout
    assert "wrote metrics.jsonl and curves.png from the checkpoint" in stdout and "training on" not in stdout
    assert (out / "metrics.jsonl").read_text() == metrics and (out / "curves.png").stat().st_size > 0
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    last = json.loads((out / "run.json").read_text())["sessions"][-1]
    assert (last["status"], last["epochs_before"], last["epochs_after"], last["world_size"]) == ("finished", 2, 2, 2)


def test_sigterm_stops_every_rank_with_a_checkpoint_and_the_run_goes_on_later(elastic_reference, tmp_path):
    """SIGTERM to torchrun (what a scheduler sends): it passes it to the workers, which stop at the same
    step after a checkpoint (rank 0 says so, once); a later launch with the same command continues."""
    agent = elastic(tmp_path, "--max-restarts=0")
    wait_for_mid_epoch_checkpoint(agent, tmp_path / "checkpoint.pt")
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=120)
    assert agent.returncode != 0 and stderr.count("nin: stopped by SIGTERM") == 1, stderr[-3000:]
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][-1]["status"] == "stopped"
    later = elastic(tmp_path, "--max-restarts=0")
    _, stderr = later.communicate(timeout=300)
    assert later.returncode == 0, stderr[-3000:]
    ours, theirs = weights(tmp_path), weights(elastic_reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_sweep_under_torchrun_prints_once(tmp_path):
    result = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "nin", "sweep", *RUN,
                             "--epochs", "1", "--seeds", "2", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("preset quick:", "sweep: seed 0:", "sweep: seed 1:", "failed runs:", "training on cpu x 2"):
        assert result.stdout.count(line) == (2 if line.startswith("training") else 1), line
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][1]["seed"] == 1


def test_a_hung_rank_makes_the_others_stop_within_the_collective_timeout(tmp_path):
    """Rank 1 stops answering (SIGSTOP) mid-epoch: rank 0 waits NIN_COLLECTIVE_TIMEOUT seconds in its next
    collective, then exits with one clear error instead of hanging."""
    agent = elastic(tmp_path, "--max-restarts=0", env={**os.environ, "NIN_COLLECTIVE_TIMEOUT": "3"})
    wait_for_mid_epoch_checkpoint(agent, tmp_path / "checkpoint.pt")
    rank0, rank1 = worker(agent.pid, 0), worker(agent.pid, 1)
    os.kill(rank1, signal.SIGSTOP)
    stopped = time.time()
    while Path(f"/proc/{rank0}").exists() and time.time() - stopped < 60:
        time.sleep(0.05)
    waited = time.time() - stopped
    os.kill(rank1, signal.SIGKILL)  # the agent cannot stop a stopped process by SIGTERM
    _, stderr = agent.communicate(timeout=120)
    assert waited < 3 + 15, waited  # the timeout, and the exit
    assert "rank 0: a collective with the other processes failed" in stderr
    assert "stopped answering for 3 s (NIN_COLLECTIVE_TIMEOUT)" in stderr


BN = ["--arch", "nin-bn", "--width", "4", "--resize", "28", "--epochs", "2", "--batch-size", "96", "--lr", "0.1",
      "--momentum", "0", "--schedule", "constant", "--label-smoothing", "0", "--weight-decay", "0", "--init",
      "kaiming", "--dropout", "0", "--train-limit", "192", "--test-limit", "200", "--device", "cpu",
      "--precision", "fp32", "--seed", "1"]  # fmt: skip
# Two full batches of 96, and --seed 1: a well-conditioned start (with seed 0 a width-4 BatchNorm channel is nearly
# constant, and one process alone ends 1-4e-2 apart with 1 or 2 threads: rounding, not the collectives). Open: with
# 160 images (a last batch of 64, 32 a rank) two synced processes end 1e-3 from one; docs/distributed.md.


def test_sync_bn_makes_two_processes_normalise_as_one(tmp_path):
    """BatchNorm under DDP normalises each process's slice; with --sync-bn, the whole global batch, so two
    processes end with the weights of one (to the tolerance of the plain DDP test above), and without it
    they do not."""
    results = {name: nin_train(n, tmp_path / name, *flags, run=BN)
               for name, n, flags in (("one", 1, ["--sync-bn"]), ("synced", 2, ["--sync-bn"]),
                                      ("local", 2, []))}  # fmt: skip
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    one, start = weights(tmp_path / "one"), init_model(from_dict(json.loads((tmp_path / "one" / "config.json")
                                                                         .read_text()))).state_dict()  # fmt: skip

    def off(run: str) -> float:
        """The largest difference to the one-process run, relative to how far training moved a tensor."""
        other = weights(tmp_path / run)
        return max(((other[k] - one[k]).norm() / (one[k] - start[k]).norm()).item()
                   for k in one if one[k].is_floating_point() and (one[k] - start[k]).norm() > 0)  # fmt: skip

    assert off("synced") <= 1e-3
    assert off("local") > 1e-2  # per-slice statistics: another network
