"""The weights that ship with nin: each model card holds for its weights file, a changed file is refused, and
every command takes `--weights NAME` without writing into the package."""

import dataclasses
import fnmatch
import hashlib
import importlib.util
import json
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import nin
from helpers import check_page
from nin.cli import main
from nin.inference import shipped
from nin.models.nin import layer_summary

NAMES = shipped.names()
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def fast() -> nin.Run:
    return nin.load_weights("fast")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fast_ships_and_is_the_fast_preset_with_seed_0(fast):
    assert "fast" in NAMES
    preset = nin.load_preset("fast")
    assert dataclasses.replace(fast.config, precision=preset.precision) == preset and fast.config.seed == 0
    assert fast.config.precision == "bf16"  # what trained them; they evaluate in fp32 (test_model_card_holds...)
    assert not fast.model.training
    assert fast.card["record"]["sessions"][-1]["status"] == "finished"
    assert "train --preset fast" in shlex.join(fast.card["source"]["command"])
    assert fast.card["source"]["preset"] == "fast" and fast.card["source"]["seed"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_model_card_holds_for_its_weights(name, tmp_path):
    """The card's test accuracy, re-measured from the weights file in fp32 on the CPU on all 10,000 test
    images, exactly; and its parameters, MACs and SHA-256; the model card README.md says the same."""
    run = nin.load_weights(name)
    card, measured = run.card, run.card["evaluation"]
    result = run.evaluate(device="cpu", plot=tmp_path / "confusion.png")
    assert (result["precision"], result["examples"], measured["test_images"]) == ("fp32", 10_000, 10_000)
    assert result["test_acc"] == measured["test_acc"]
    assert round(result["test_acc"] * 10_000) == measured["test_correct"]
    rows = layer_summary(run.model, run.config.resize)
    assert sum(r["params"] for r in rows) == measured["parameters"] == sum(p.numel() for p in run.model.parameters())
    assert sum(r["macs"] for r in rows) == measured["macs"]
    weights = shipped.WEIGHTS_DIR / name / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
    state = load_file(weights)
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    assert list(card["id2label"].values()) == list(run.classes) and card["source"]["seed"] == card["training"]["seed"]
    assert card["source"]["nin_commit"] == card["record"]["sessions"][0]["nin_commit"]
    assert card["metrics"] == run.metrics and len(run.metrics) == run.config.epochs
    readme = (shipped.WEIGHTS_DIR / name / "README.md").read_text()
    assert (
        readme.startswith("---\nlibrary_name: nin\n") and f"| test accuracy | {measured['test_acc']:.4f} on" in readme
    )


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS_DIR, weights)
    data = bytearray((weights / "fast" / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 1  # one bit, inside the tensor data: the safetensors reader alone would not notice
    (weights / "fast" / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights)
    with pytest.raises(nin.NinError, match="model.safetensors: its SHA-256 differs from the one in config.json"):
        nin.load_weights("fast")
    assert main(["evaluate", "--weights", "fast"]) == 2
    assert "reinstall nin" in capsys.readouterr().err


def test_unknown_name_lists_the_names(capsys):
    with pytest.raises(nin.NinError, match="no shipped weights named 'fats'; choose from fast"):
        nin.load_weights("fats")
    assert main(["predict", "--weights", "fats", "shirt.png"]) == 2
    assert "choose from fast" in capsys.readouterr().err


def test_a_name_outside_the_weights_folder_reads_nothing_there(tmp_path, monkeypatch, capsys):
    """--weights ../x must not read a model directory x beside the weights folder (nor anywhere else)."""
    weights = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS_DIR, weights)
    shutil.copytree(weights / "fast", tmp_path / "x")  # weights that would load, one folder up
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights)
    for name in ("../x", str(tmp_path / "x"), "fast/config.json", ""):
        with pytest.raises(nin.NinError, match=f"no shipped weights named {name!r}; choose from fast"):
            nin.load_weights(name)
    assert main(["evaluate", "--weights", "../x"]) == 2
    assert "no shipped weights named '../x'" in capsys.readouterr().err


def test_nin_weights_lists_the_cards(fast, capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"{name}: " in out
    assert f"test accuracy  {fast.card['evaluation']['test_acc']:.4f} (" in out and fast.card["sha256"] in out
    assert main(["weights", "fast", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [fast.card]


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_every_command_takes_weights_and_writes_into_the_current_directory(fast, in_tmp, capsys):
    package = sorted(p.name for p in shipped.WEIGHTS_DIR.parent.rglob("*"))
    images, _ = nin.load_fashion_mnist("test")
    Image.fromarray(images[0].numpy()).save(in_tmp / "boot.png")
    expected = fast.predict(images[:1])[0]["top"][0]["class"]

    assert main(["predict", "--weights", "fast", "boot.png"]) == 0
    assert capsys.readouterr().out.startswith(f"boot.png: {expected} ")
    assert main(["evaluate", "--weights", "fast", "--test-limit", "200"]) == 0
    assert main(["cam", "--weights", "fast", "boot.png"]) == 0
    assert main(["report", "--weights", "fast", "--test-limit", "200"]) == 0
    assert main(["export", "--weights", "fast"]) == 0
    made = {"fast-confusion_matrix.png", "fast-cam.png", "fast-report.html", "fast-weights.pt", "fast-weights.json"}
    assert {p.name for p in in_tmp.iterdir()} == made | {"boot.png"}
    assert sorted(p.name for p in shipped.WEIGHTS_DIR.parent.rglob("*")) == package  # nothing written there
    check_page(in_tmp / "fast-report.html")
    exported = nin.load("fast-weights.pt")  # its description beside it says the input size
    assert exported.predict(images[:1]) == fast.predict(images[:1]) and exported.config.resize == 28


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["evaluate"], "give a run directory or checkpoint, or --weights NAME"),
        (["predict", "--weights", "fast", "--resize", "32", "a.png"], "shipped weights know their input size"),
        (["predict", "--weights", "fast"], "no images given"),
        (["export", "runs/fast", "--weights", "fast"], "give either runs/fast or --weights fast, not both"),
    ],
)
def test_bad_weights_arguments(args, fragment, capsys):
    assert main(args) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_ship_weights_writes_a_card_that_loads(tmp_path, monkeypatch, capsys):
    """benchmarks/ship_weights.py on a tiny real run: the directory, and the card measured from its weights."""
    spec = importlib.util.spec_from_file_location("ship_weights", BENCHMARKS / "ship_weights.py")
    ship_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_weights)
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "weights")
    run = nin.train("fast", out=tmp_path / "run", width=4, epochs=1, train_limit=512, test_limit=64, device="cpu")
    unfinished = nin.Run(run.path, run.checkpoint, run.config, run.model, run.metrics, None, run.spec)
    monkeypatch.setattr(nin, "load", lambda path: unfinished if str(path) == "no-record" else run)
    assert ship_weights.main(["no-record", "--name", "tiny", "--description", "d", "--out", str(tmp_path)]) == 2
    assert "not a finished run with a run record" in capsys.readouterr().err
    assert ship_weights.main([str(run.path), "--name", "tiny", "--description", "a tiny run",
                              "--out", str(tmp_path / "weights")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "weights" / "tiny").iterdir()) == ["README.md", "config.json",
                                                                               "model.safetensors"]  # fmt: skip
    tiny = nin.load_weights("tiny")
    card, measured = tiny.card, tiny.card["evaluation"]
    assert measured["test_acc"] == tiny.evaluate(device="cpu", plot=tmp_path / "c.png")["test_acc"]
    assert measured["test_images"] == 10_000 and card["metrics"] == run.metrics
    assert card["record"] == nin.inference.pretrained.portable(run.record)
    ran = run.record["sessions"][0]["precision"]
    assert card["training"] == {**run.config.to_dict(), "precision": ran} and card["source"]["seed"] == 0
    assert card["source"]["command"] == card["record"]["sessions"][0]["command"]
    assert f"(seed 0, trained in {ran})" in (tmp_path / "weights" / "tiny" / "README.md").read_text()
    assert 0 <= measured["fp32_error"] < 1e-4 and measured["smallest_top2_gap"] >= 0
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, tiny.model.state_dict()[key])


def test_package_data_holds_the_weights_and_the_page():
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["nin"]
    package = Path(nin.__file__).parent
    for path in [*(p for p in shipped.WEIGHTS_DIR.rglob("*") if p.is_file()), package / "serve" / "page.html"]:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


@pytest.mark.parametrize("name", NAMES)
def test_cards_say_the_precision_that_trained_and_no_local_path(name):
    """The card says the precision training ran in (the run record's), beside the fp32 its accuracy was
    measured in; the training command it quotes names no folder of the machine that trained it."""
    card = shipped.card(name)
    readme = (shipped.WEIGHTS_DIR / name / "README.md").read_text()
    ran = {s["precision"] for s in card["record"]["sessions"]}
    assert ran == {card["training"]["precision"]} and f"precision={card['training']['precision']}" in readme
    assert f"trained in {card['training']['precision']}" in readme and "fp32 on the CPU, from the weights" in readme
    commands = [card["source"]["command"], *(s["command"] for s in card["record"]["sessions"])]
    quoted = next(line for line in readme.splitlines() if line.startswith("| trained by |")).split("`")[1]
    for word in [*(w for c in commands for w in c), *shlex.split(quoted)]:
        assert not Path(word.split("=")[-1]).expanduser().is_absolute(), (name, word)
    assert quoted == shlex.join(card["source"]["command"])
