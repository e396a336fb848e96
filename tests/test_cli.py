"""Every command through the real entry point; errors are one line and a non-zero exit, never a traceback."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from nin.cli import config_of, get_args_parser, main
from nin.config import Config
from nin.data.registry import load_fashion_mnist, load_split
from nin.data.subsets import pick


def nin(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "nin", *args], capture_output=True, text=True, env=env)


def here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`nin ARGS` through the same `main`, in this process: what a process would print, without paying its
    torch import (an exception escaping `main`, a process's traceback, fails the test)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["nin", *args], code, out, err)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_help_lists_every_command(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width

    def usage(*args: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([*args, "--help"])
        assert exited.value.code == 0
        return capsys.readouterr().out

    listed = re.findall(r"^    (\w+)(?: |$)", usage(), re.MULTILINE)  # argparse's list of subcommands
    assert listed == ["summary", "train", "sweep", "tune", "benchmark", "evaluate", "predict", "cam", "compare",
                      "report", "export", "weights", "serve"]  # fmt: skip
    train_help = usage("train")
    for flag in ("--preset", "--config", "--epochs", "--lr", "--batch-size", "--resize", "--device", "--seed",
                 "--train-limit", "--test-limit", "--out", "--force", "--data-dir", "--precision", "--resume",
                 "--checkpoint-every", "--arch", "--width", "--weight-decay", "--schedule", "--warmup",
                 "--label-smoothing", "--augment", "--val-split"):  # fmt: skip
        assert re.search(rf"^  {flag}\b", train_help, re.MULTILINE), flag


LOADED = """import json, sys
from nin.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit:
        pass
print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib" or m == "nin.training.compare"))
"""


@pytest.mark.slow  # a real process: what the commands import is seen only in a fresh one
def test_help_and_summary_load_neither_matplotlib_nor_the_comparison_models():
    commands = [["--help"], ["train", "--help"], ["summary"], ["summary", "--preset", "fast"]]
    result = subprocess.run([sys.executable, "-c", LOADED, json.dumps(commands)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: nin train" in result.stdout and "1,992,166" in result.stdout  # every command ran
    assert result.stdout.splitlines()[-1] == "[]"  # none of the four loaded them


def test_config_file_then_flags(tmp_path, capsys):
    config = tmp_path / "mine.toml"
    config.write_text('arch = "nin-bn"\nwidth = 8\nresize = 28\nepochs = 3\nlr = 0.3\nprecision = "fp32"\n')
    args = get_args_parser().parse_args(["train", "--config", str(config), "--epochs", "1", "--lr", "0.05"])
    assert config_of(args) == (Config(arch="nin-bn", width=8, resize=28, epochs=1, lr=0.05), "mine")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--train-limit", "64", "--test-limit", "32",
                 "--out", str(out)]) == 0  # fmt: skip
    saved = json.loads((out / "config.json").read_text())
    assert (saved["arch"], saved["width"], saved["epochs"], saved["lr"]) == ("nin-bn", 8, 1, 0.3)
    with pytest.raises(SystemExit):  # one source of settings: a preset or a config file
        main(["train", "--config", str(config), "--preset", "fast"])


def test_summary(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "(1, 96, 54, 54)" in out and "1,992,166" in out and "0.762 GMAC" in out
    assert main(["summary", "--resize", "96"]) == 0
    assert "(1, 10)" in capsys.readouterr().out
    assert main(["summary", "--preset", "fast"]) == 0
    out = capsys.readouterr().out
    assert "per 28x28 image" in out and "(1, 10, 3, 3)" in out


def test_summary_resize_too_small(capsys):
    assert_clean_error(here(capsys, "summary", "--resize", "32"), "too small", "67x67")


@pytest.mark.slow  # three short trainings
def test_train_smoke_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "quick", "--epochs", "1", "--resize", "67", "--train-limit", "128",
            "--test-limit", "64", "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = here(capsys, *args)
    assert result.returncode == 0, result.stderr
    assert "training on cpu" in result.stdout
    assert "examples/sec on cpu" in result.stdout and "test acc" in result.stdout
    assert (out / "checkpoint.pt").exists()
    before = (out / "checkpoint.pt").read_bytes()
    assert_clean_error(here(capsys, *args), "already exists", "--force")
    assert (out / "checkpoint.pt").read_bytes() == before  # untouched
    (out / "confusion_matrix.png").write_bytes(b"from the old run")
    (out / "notes.txt").write_text("mine")
    diverging = ["--force", "--lr", "1e9", "--train-limit", "512"]
    assert_clean_error(here(capsys, *args, *diverging), "training diverged")
    assert not (out / "checkpoint.pt").exists()  # the old run's files are gone, not mixed with the new run's
    assert not (out / "confusion_matrix.png").exists()
    assert (out / "notes.txt").read_text() == "mine"  # files that are not run files stay
    assert here(capsys, *args, "--force").returncode == 0


def test_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("data")
    assert_clean_error(here(capsys, "train", "--out", str(tmp_path / "taken"), "--force"), "is a file, not a directory")
    assert (tmp_path / "taken").read_text() == "data"


@pytest.mark.slow  # a short training
def test_train_default_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = here(capsys, "train", "--epochs", "1", "--train-limit", "64", "--test-limit", "32", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "preset fast: arch=nin-bn" in result.stdout  # the default preset
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("fast-") and (run / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--preset", "fats"], ["unknown preset 'fats'", "choose from"]),
        (["train", "--preset", "quick", "--resize", "20"], ["too small", "67x67"]),
        (["train", "--lr", "-1"], ["lr must be positive"]),
        (["train", "--config", "missing.toml"], ["cannot read config file"]),
        pytest.param(
            ["train", "--device", "cuda"],
            ["no CUDA device"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
        ),
        (["train", "--seed", str(2**70)], ["seed must be in"]),
        (["evaluate", "nowhere", "--test-limit", "-5"], ["--test-limit must be 0"]),
        (["evaluate", "nowhere"], ["no such checkpoint"]),
        (["predict", "nowhere", "x.png"], ["no such checkpoint"]),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, monkeypatch, capsys, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: ") and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "runs").exists()  # nothing was created


@pytest.mark.parametrize(
    "args", [["train", "--bogus", "1"], ["train", "--epoch", "3"], ["evaluate", "x", "--device", "tpu"]]
)
def test_unknown_options_and_abbreviations_are_refused(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "usage:" in capsys.readouterr().err


def test_bad_data_dir(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"junk")
    result = here(capsys, "train", "--resize", "67", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert_clean_error(result, "train-images-idx3-ubyte.gz: not a readable gzip file")


@pytest.mark.slow  # evaluates 200 images twice
def test_evaluate_and_predict(trained_run, tmp_path, capsys):
    result = here(capsys, "evaluate", str(trained_run), "--json", "--test-limit", "200",
                  "--plot", str(tmp_path / "cm.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    matrix = torch.tensor(report["confusion_matrix"])
    assert matrix.sum() == report["examples"] == 200 and len(report["per_class_acc"]) == 10
    assert report["test_acc"] == matrix.diag().sum().item() / 200
    (session,) = report["record"]["sessions"]  # how the run was made
    assert (session["status"], session["precision"], session["device"]) == ("finished", "fp32", "cpu")
    assert (tmp_path / "cm.png").exists()
    text = here(capsys, "evaluate", str(trained_run / "checkpoint.pt"), "--tta", "--test-limit", "200",
                "--plot", str(tmp_path / "c.png"))  # fmt: skip
    assert "test accuracy with flip TTA" in text.stdout and "Ankle boot" in text.stdout
    assert "(finished): " in text.stdout and "fp32, 1 process(es), torch " in text.stdout

    images, _ = load_fashion_mnist("test")
    png = tmp_path / "boot.png"
    Image.fromarray(images[0].numpy()).save(png)
    result = here(capsys, "predict", str(trained_run), str(png))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{png}: ") and line.count(",") == 2
    assert len(json.loads(here(capsys, "predict", str(trained_run), str(png), "--json").stdout)[0]["top"]) == 3


@pytest.mark.slow  # a real process: its exit status and all it prints
def test_bad_image_in_a_real_process(trained_run, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    assert_clean_error(nin("predict", str(trained_run), str(tmp_path / "notes.png")), "not a supported image format")


def test_foreign_checkpoint(tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    assert_clean_error(here(capsys, "evaluate", str(tmp_path / "other.pt")), "not a nin checkpoint")


@pytest.mark.slow  # a real process
def test_module_and_console_script_agree():
    assert (
        nin("summary").stdout
        == subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "nin"), "summary"], capture_output=True, text=True
        ).stdout
    )


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_mnist_with_every_command_after_it(tmp_path, capsys):

    out = tmp_path / "mnist"
    assert main(["train", "--preset", "mnist", "--epochs", "1", "--train-limit", "1024", "--test-limit", "200",
                 "--out", str(out), "--device", "cpu", "--precision", "fp32"]) == 0  # fmt: skip
    assert "test images of mnist at 28x28" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--test-limit", "200", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "mnist" and list(result["per_class_acc"]) == list("0123456789")
    seven = tmp_path / "seven.png"
    Image.fromarray(load_split("mnist", "test").images[0, 0].numpy()).save(seven)  # the first test digit: a 7
    assert main(["predict", str(out), str(seven), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] in "0123456789"
    drawn = pick(load_split("mnist", "test").labels, 2)  # cam draws its test samples from every class
    cam = capsys.readouterr().out if main(["cam", str(out), "--test-samples", "2"]) == 0 else ""
    assert all(f"test image {i}: " in cam for i in drawn.tolist()), cam
    assert main(["report", str(out), "--test-limit", "200"]) == 0 and (out / "report.html").is_file()
