"""The public API (`nin.__all__`): documented with an example each, and the one path the CLI takes."""

import doctest
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import nin
from nin.config import Config
from nin.errors import NinError

API_MD = Path(__file__).parents[1] / "docs" / "api.md"
NEEDS_A_RUN = {"Run", "load", "train"}  # their examples train or read a run directory: shown, not run
TINY = dict(epochs=1, train_limit=128, test_limit=64, device="cpu", precision="fp32")  # the fast preset: < 1 s


def public_objects() -> dict[str, object]:
    """Every name of `nin.__all__` that can carry a docstring, and the public methods of `nin.Run`."""
    objects = {name: getattr(nin, name) for name in nin.__all__ if callable(getattr(nin, name))}
    for name, member in vars(nin.Run).items():
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
            objects[f"Run.{name}"] = member
    return objects


@pytest.mark.parametrize("name", sorted(public_objects()))
def test_every_public_function_and_class_has_a_docstring_with_an_example(name):
    doc = inspect.getdoc(public_objects()[name])
    assert doc and doc.splitlines()[0].strip(), f"{name} has no docstring"
    assert re.search(r"^>>> \S", doc, re.MULTILINE), f"{name}'s docstring has no example (a '>>> ' line)"


def api_md_sections() -> dict[str, str]:
    """docs/api.md's sections headed ### `nin.NAME` or ### `Run.NAME`: name -> text (code blocks included)."""
    sections, name, fenced = {}, None, False
    for line in API_MD.read_text().splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            heading = re.fullmatch(r"### `((?:nin|Run)\.\w+)`", line)
            name = heading.group(1) if heading else None
            if name:
                sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def test_every_public_name_has_a_section_with_an_example_in_docs_api_md():
    sections = api_md_sections()
    expected = {f"nin.{name}" for name in nin.__all__} | {n for n in public_objects() if n.startswith("Run.")}
    assert expected <= set(sections), sorted(expected - set(sections))
    for name in expected:
        assert "```python" in sections[name], f"docs/api.md: {name} has no example"


@pytest.mark.parametrize("name", sorted(set(nin.__all__) - NEEDS_A_RUN - {"CLASS_NAMES"}))
def test_examples_that_need_no_run_are_true(name):
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    (test,) = finder.find(getattr(nin, name), name, globs={"nin": nin, "torch": torch})
    assert test.examples and runner.run(test).failed == 0


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_train_returns_the_run_it_wrote(tmp_path, capsys):
    run = nin.train("fast", out=tmp_path / "run", seed=3, **TINY)
    assert capsys.readouterr().out.startswith("preset fast: arch=nin-bn, width=16,")
    assert isinstance(run, nin.Run) and run.path == tmp_path / "run" and run.checkpoint == run.path / "checkpoint.pt"
    assert run.config == Config(**{**nin.load_preset("fast").to_dict(), "seed": 3, **TINY})
    assert [m["epoch"] for m in run.metrics] == [1] and run.test_acc == run.metrics[-1]["test_acc"]
    assert not run.model.training and {p.device.type for p in run.model.parameters()} == {"cpu"}
    assert run.record["sessions"][0]["status"] == "finished"
    expected = f"Run('{run.path}': nin-bn on fashion-mnist at 28x28, 1 of 1 epochs, test acc {run.test_acc:.4f})"
    assert repr(run) == expected
    again = nin.load(run.checkpoint)
    assert again.path == run.path and again.record == run.record
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    shutil.copy(run.checkpoint, tmp_path / "other.pt")
    assert nin.load(tmp_path / "other.pt").record is None  # a checkpoint file elsewhere: not that run's record
    assert run.summary()[-1]["output_shape"] == (1, 10)


def test_train_takes_a_config_or_a_config_file_and_names_the_run_after_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = Config(arch="nin-bn", width=4, resize=28, **TINY)
    assert nin.train(config).config == config
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("config-")
    (tmp_path / "mine.toml").write_text('arch = "nin-bn"\nwidth = 4\nresize = 28\n')
    assert nin.train(tmp_path / "mine.toml", **TINY).config == config
    assert "config " + str(tmp_path / "mine.toml") + ": arch=nin-bn" in capsys.readouterr().out
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "runs").iterdir()) == ["config", "mine"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: nin.train("fast", lr="0.1"), "settings: lr should be float, got '0.1'"),
        (lambda: nin.train("fast", lrr=0.1), "settings: unknown setting(s) 'lrr'; valid: arch"),
        (lambda: nin.train("fats"), "unknown preset 'fats'; choose from best, d2l, fast, mnist, quick"),
        (lambda: nin.train(resume="runs/x", lr=0.1), "--resume continues a run with its own settings; drop --lr"),
        (lambda: nin.train("fast", resume="runs/x"), "drop --preset"),
        (lambda: nin.train(resume="nowhere"), "--resume nowhere: not a run directory"),
        (lambda: nin.build_model("resnet"), "unknown model 'resnet'; choose from lenet, alexnet, vgg11, nin"),
        (lambda: nin.build_model("alexnet", 32), "resize 32 is too small for alexnet; it needs at least 65"),
    ],
)
def test_bad_calls_give_one_clear_error(tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NinError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_predict_takes_image_files_or_a_tensor_and_leaves_the_model_as_it_was(trained_run, tmp_path):
    run = nin.load(trained_run)
    images, _ = nin.load_fashion_mnist("test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i].numpy()).save(paths[-1])
    from_files, from_tensor = run.predict(paths), run.predict(images[:3])
    assert [r["image"] for r in from_tensor] == ["image 0", "image 1", "image 2"]
    assert [r["top"] for r in from_files] == [r["top"] for r in from_tensor]  # PNG round trip is lossless
    (one,) = run.predict(paths[0])  # one file needs no list
    assert [t["class"] for t in one["top"]] == [t["class"] for t in from_files[0]["top"]]
    with pytest.raises(NinError, match=r"expected a uint8 tensor of shape \(N, 1, 28, 28\), got torch.float32"):
        run.predict(images[:3].float())
    weight = next(run.model.parameters())
    before = weight.clone()
    run.evaluate(device="cpu", test_limit=64, plot=tmp_path / "cm.png")
    assert weight.is_contiguous() and torch.equal(weight, before)  # evaluated a channels-last copy


@pytest.mark.slow  # a real process: `nin train`
def test_a_run_from_python_and_the_same_run_from_the_cli_end_with_identical_weights(tmp_path):
    settings = dict(epochs=1, resize=67, train_limit=128, test_limit=64, device="cpu", precision="fp32", seed=1)
    python = nin.train("quick", out=tmp_path / "python", **settings)
    flags, cli_run = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()], tmp_path / "cli"
    cli = subprocess.run([sys.executable, "-m", "nin", "train", "--preset", "quick", *flags, "--out", str(cli_run)],
                         capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    ours, theirs = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (python.path, cli_run))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert nin.load(cli_run).config == python.config
