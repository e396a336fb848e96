"""The directory form (model.safetensors + config.json + README.md) and state-dict exports with their
description: each loads back as what it is (the same classes, the same predictions), offline, and a damaged
or edited one is refused with one clear error."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import nin
from helpers import require
from nin.cli import main
from nin.data.registry import load_split
from nin.inference import shipped
from nin.inference.description import describe
from nin.inference.evaluate import logits
from seed_nin import seed_net

REPO = Path(__file__).parents[2]
TINY = dict(width=4, epochs=1, train_limit=256, test_limit=64, device="cpu", precision="fp32")


def same_model(a: nin.Run, b: nin.Run) -> None:
    """The same class names, input size and predictions (logits to 1e-6) on 64 of the test images."""
    assert a.classes == b.classes and a.config.resize == b.config.resize and a.spec == b.spec
    images = load_split(a.spec.dataset, "test").images[:64]
    torch.testing.assert_close(logits(b.model, images, b.config.resize), logits(a.model, images, a.config.resize),
                               atol=1e-6, rtol=0)  # fmt: skip


@pytest.fixture(scope="module")
def normalizing_run(tmp_path_factory) -> nin.Run:
    """A --normalize run on MNIST (as the mnist preset trains), tiny."""
    out = tmp_path_factory.mktemp("runs") / "normalize"
    return nin.train("fast", out=out, dataset="mnist", normalize=True, **TINY)


@pytest.fixture
def offline(monkeypatch):
    """No network: huggingface_hub told so, and any socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", shipped.names())
def test_every_shipped_weight_round_trips_through_both_exports(name, tmp_path, offline):
    run = nin.load_weights(name)
    folder = run.export(tmp_path / name, format="safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = nin.from_pretrained(folder)
    same_model(run, again)
    assert again.metrics == run.metrics and again.record == run.record and again.card is None
    assert json.loads((folder / "config.json").read_text())["evaluation"] == run.card["evaluation"]
    for key, value in load_file(folder / "model.safetensors").items():  # bit-identical weights
        assert torch.equal(value, run.model.state_dict()[key])
    path = run.export(tmp_path / "w.pt")  # the repro: digits came back as Fashion-MNIST classes
    assert (tmp_path / "w.json").is_file()
    same_model(run, nin.load(path))


def test_a_normalizing_mnist_run_round_trips(normalizing_run, tmp_path):
    run = normalizing_run
    described = json.loads(run.export(tmp_path / "d", format="safetensors").joinpath("config.json").read_text())
    assert described["mean"] == run.model[0].mean.flatten().tolist() and described["std"] is not None
    assert described["id2label"]["7"] == "7" and described["label2id"]["7"] == 7 and described["dataset"] == "mnist"
    assert described["training"] == run.config.to_dict() and described["source"]["test_acc"] == run.test_acc
    same_model(run, nin.from_pretrained(tmp_path / "d"))
    same_model(run, nin.load(run.export(tmp_path / "w.pt")))
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert set(state) == set(run.model.state_dict())  # still a plain state_dict
    checkpoint = torch.load(run.checkpoint, weights_only=True)
    assert checkpoint["data"] == describe(run.config, run.spec, run.model.state_dict())  # one description


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_export_and_predict_a_digit_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    test = load_split("mnist", "test")
    Image.fromarray(test.images[0, 0].numpy()).save("digit.png")
    assert main(["export", "--weights", "mnist-fast", "--format", "safetensors", "--out", "d"]) == 0
    assert capsys.readouterr().out.strip() == "model directory: d"
    assert main(["predict", "d", "digit.png"]) == 0
    assert capsys.readouterr().out.startswith(f"digit.png: {test.labels[0].item()} ")
    assert main(["evaluate", "d", "--test-limit", "100", "--plot", "cm.png"]) == 0
    assert main(["cam", "d", "digit.png", "--out", "cam.png"]) == 0
    assert main(["report", "d", "--test-limit", "100", "--out", "report.html"]) == 0


def test_loading_a_model_directory_never_touches_the_network(tmp_path, offline):
    folder = nin.load_weights("fast").export(tmp_path / "fast", format="safetensors")
    run = nin.from_pretrained(str(folder))
    hub = require("huggingface_hub")
    assert isinstance(run.model, hub.PyTorchModelHubMixin) and isinstance(run.model, nin.NiN)
    model = type(run.model).from_pretrained(folder)
    assert model.classes == run.classes and model.input_size == (1, 28, 28) and not model.training
    assert nin.from_pretrained("fast").card["name"] == "fast"  # a shipped name: no network either


def test_save_pretrained_and_from_pretrained_round_trip(normalizing_run, tmp_path, offline):
    require("huggingface_hub")
    run = nin.from_pretrained(normalizing_run.export(tmp_path / "d", format="safetensors"))
    run.model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    saved, exported = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("saved", "d"))
    del saved["sha256"], exported["sha256"]  # safetensors writes its metadata in any order: other bytes, same tensors
    assert saved == exported
    assert "library_name: nin" in (tmp_path / "saved" / "README.md").read_text()
    model = type(run.model).from_pretrained(tmp_path / "saved")
    x = torch.rand(4, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), normalizing_run.model(x), atol=1e-6, rtol=0)
    same_model(normalizing_run, nin.from_pretrained(tmp_path / "saved"))


def test_torch_hub_entrypoints_work_offline(offline):
    fast = torch.hub.load(str(REPO), "nin_fast", source="local", pretrained=True)
    x = torch.rand(2, 1, 28, 28)  # float images in [0, 1], N x C x H x W
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), nin.load_weights("fast").model(x))
    assert not fast.training
    digits = torch.hub.load(str(REPO), "nin_mnist_fast", source="local", pretrained=True)
    assert digits.classes[:3] == ("0", "1", "2")
    untrained = torch.hub.load(str(REPO), "nin_fast", source="local")
    assert sum(p.numel() for p in untrained.parameters()) == sum(p.numel() for p in fast.parameters())
    d2l = torch.hub.load(str(REPO), "nin_d2l", source="local")
    assert d2l(torch.rand(1, 1, 224, 224)).shape == (1, 10)
    with pytest.raises(ValueError, match="nin ships no weights for d2l's NiN"):
        torch.hub.load(str(REPO), "nin_d2l", source="local", pretrained=True)


def test_a_bare_state_dict_says_what_it_assumed_and_takes_dataset(tmp_path, capsys):
    path = tmp_path / "nin.pt"
    torch.save(seed_net().state_dict(), path)  # the seed notebook's own save
    assert nin.load(path).classes == nin.CLASS_NAMES
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "bare state_dict: taken as nin at 224x224 on fashion-mnist data (assumed)" in note
    digits = nin.load(path, dataset="mnist")
    assert digits.classes[:3] == ("0", "1", "2") and digits.spec.dataset == "mnist"
    assert "(assumed)" not in capsys.readouterr().err
    png = tmp_path / "digit.png"
    Image.fromarray(load_split("mnist", "test").images[0, 0].numpy()).save(png)
    assert main(["predict", str(path), str(png), "--dataset", "mnist", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] in digits.classes


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["predict", "--weights", "fast", "--dataset", "mnist", "a.png"], "--dataset mnist: shipped weights know"),
        (["evaluate", "CHECKPOINT", "--dataset", "mnist"], "is a nin checkpoint, trained at 67x67 on fashion-mnist"),
        (["export", "--weights", "fast", "--format", "state-dict", "--quantize", "int8"], "for --format onnx"),
        (["export", "--weights", "fast", "--format", "safetensors"], "give it with --out DIR"),
        (["export", "--weights", "fast", "--out", "w.json"], "name the weights file otherwise"),
    ],
)
def test_bad_arguments_give_one_clear_error(args, fragment, trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [str(trained_run / "checkpoint.pt") if a == "CHECKPOINT" else a for a in args]
    assert main(args) == 2
    assert fragment in capsys.readouterr().err


def test_damaged_edited_or_foreign_files_are_refused(tmp_path, capsys):
    run = nin.load_weights("mnist-fast")
    folder = run.export(tmp_path / "d", format="safetensors")
    good = {name: (folder / name).read_bytes() for name in ("model.safetensors", "config.json")}

    data = bytearray(good["model.safetensors"])
    data[-100] ^= 1  # one bit inside a tensor: the safetensors reader alone would not notice
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(nin.NinError, match="model.safetensors: its SHA-256 differs from the one in config.json"):
        nin.from_pretrained(folder)
    with pytest.raises(nin.NinError, match="its SHA-256 differs"):
        nin.load(folder / "model.safetensors")  # the weights file of a model directory: the directory
    (folder / "model.safetensors").write_bytes(good["model.safetensors"])

    described = json.loads(good["config.json"])
    described["label2id"]["0"] = 5  # one class index edited
    (folder / "config.json").write_text(json.dumps(described))
    with pytest.raises(nin.NinError, match="config.json: label2id do not match the weights"):
        nin.load(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(nin.NinError, match="config.json: not a readable nin model description"):
        nin.load(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["ViT"]}))  # someone else's config.json
    with pytest.raises(nin.NinError, match="not a nin model description"):
        nin.load(folder)

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(nin.NinError, match="mine is not empty and not a nin model directory"):
        run.export(tmp_path / "mine", format="safetensors")
    (tmp_path / "w.json").write_text("{}")
    with pytest.raises(nin.NinError, match="w.json exists and is not a description written by nin export"):
        run.export(tmp_path / "w.pt")
    assert (tmp_path / "w.json").read_text() == "{}" and not (tmp_path / "w.pt").exists()

    shutil.copy(tmp_path / "d" / "model.safetensors", tmp_path / "x.safetensors")
    assert nin.load(tmp_path / "x.safetensors").spec.dataset == "fashion-mnist"  # weights alone: a bare state_dict
    assert "x.safetensors is a bare state_dict: taken as nin-bn at 28x28 on fashion-mnist data (assumed)" in (
        capsys.readouterr().err
    )


def test_from_pretrained_names_what_it_takes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(nin.NinError, match="nowhere: no such file or directory, and not the name of shipped weights"):
        nin.from_pretrained("nowhere")
    fetched = lambda repo: nin.load_weights("fast").export("got", format="safetensors")  # noqa: E731
    monkeypatch.setattr(nin.api, "fetch_from_hub", fetched)
    assert nin.from_pretrained("someone/nin-fast").path == Path("got")  # a Hub repository, fetched


@pytest.mark.slow
def test_hubconf_uses_the_nin_beside_it_in_a_fresh_process(tmp_path):
    """torch.hub imports hubconf.py from the repository root: it puts src/ first, so the nin it loads is the
    repository's own, whatever else is installed; offline, from another directory."""
    code = (
        f"import sys, torch; m = torch.hub.load({str(REPO)!r}, 'nin_mnist_fast', source='local', "
        "pretrained=True); print(sys.modules['nin'].__file__, m.classes[0], tuple(m(torch.rand(1, 1, 28, 28)).shape))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(REPO / "src" / "nin" / "__init__.py"), "0", "(1,", "10)"]


@pytest.mark.slow
def test_loaders_and_torch_hub_give_the_same_model_without_huggingface_hub(tmp_path):
    """huggingface_hub unimportable (an optional extra): torch.hub's pretrained model and nin's loaders still
    carry the classes, input size and description that they carry with it; hubconf names what it imports."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / "src")!r})  # this checkout's nin, as hubconf.py puts it first
{{}}
import torch, nin
hub = torch.hub.load({str(REPO)!r}, "nin_mnist_fast", source="local", pretrained=True)
run = nin.load_weights("mnist-fast")
assert type(hub).__name__ == type(run.model).__name__, (type(hub), type(run.model))
fast = nin.from_pretrained({str(REPO / "src/nin/inference/weights/fast")!r}).model
print(json.dumps([[list(m.classes), list(m.input_size), m.config["input_range"], m.config["mean"]]
                  for m in (hub, run.model, fast)]))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    answers = []
    for hide in ("", "sys.modules['huggingface_hub'] = None"):
        result = subprocess.run([sys.executable, "-c", code.format(hide)], capture_output=True, text=True,
                                cwd=tmp_path, env=env, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1]
    digits = [list("0123456789"), [1, 28, 28], [0.0, 1.0], None]
    assert answers[0][:2] == [digits, digits] and answers[0][2][0][0] == "T-shirt/top"
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    imported = {re.split("[<>=]", r)[0].replace("Pillow", "PIL") for r in required}  # the import names
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert set(hubconf.dependencies) == imported  # torch.hub names a missing one before importing anything


@pytest.fixture
def stranger(tmp_path) -> tuple[Path, dict]:
    """A model directory as downloaded from elsewhere (mnist-fast's export), and its config.json to edit."""
    folder = nin.load_weights("mnist-fast").export(tmp_path / "downloaded", format="safetensors")
    return folder, json.loads((folder / "config.json").read_text())


def test_a_model_directorys_data_dir_is_never_used(stranger, tmp_path, monkeypatch, capsys):
    folder, described = stranger
    described["data_dir"] = str(tmp_path / "theirs")  # a folder of its choosing
    (folder / "config.json").write_text(json.dumps(described))
    assert nin.load(folder).spec.data_dir is None
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(folder), "--test-limit", "50", "--plot", "cm.png"]) == 0
    assert not (tmp_path / "theirs").exists()  # the user's flag or the default only
    assert json.loads((nin.load(folder).export(tmp_path / "again", format="safetensors") / "config.json")
                      .read_text())["data_dir"] is None  # fmt: skip


@pytest.mark.parametrize(
    "edit, fragment",
    [
        ({"dataset": "cifar10"}, "dataset cifar10 has 3 channel(s) and 10 classes; the weights take 1 channel(s)"),
        ({"dataset": "imagenet"}, "dataset must be one of fashion-mnist, mnist, cifar10, cifar100, folder"),
        ({"dataset": "fashion-mnist"}, "dataset fashion-mnist's classes are not the ones in id2label"),
        ({"image_size": 100_000}, "image_size 100000 is larger than"),
        ({"image_size": "28"}, "image_size should be int"),
        ({"in_channels": 3, "input_size": [3, 28, 28]}, "in_channels 3 and num_classes 10 do not fit the weights"),
        ({"id2label": dict(enumerate("0123456789A")), "num_classes": 11}, "num_classes 11 do not fit the weights"),
        ({"id2label": {"0": 0}}, "id2label should map '0', '1', ... to class names"),
        ({"in_channels": -1}, "in_channels should be a number of channels"),
        ({"width": 17}, "width do not match"),
        ({"metrics": [{"epoch": "one"}]}, "metrics should be a list of epochs"),
        ({"record": {"sessions": "x"}}, "record should be None or"),
        ({"training": {"arch": "vit"}}, "arch must be one of"),
    ],
)
def test_a_model_directory_from_elsewhere_is_data_not_orders(stranger, tmp_path, edit, fragment, monkeypatch,
                                                             capsys):  # fmt: skip
    folder, described = stranger
    described["data_dir"] = str(tmp_path / "theirs")
    described.update({k: ({**described[k], **v} if k == "training" else v) for k, v in edit.items()})
    (folder / "config.json").write_text(json.dumps(described))
    with pytest.raises(nin.NinError, match=f"config.json: .*{re.escape(fragment)}"):
        nin.from_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "theirs").exists()


def test_export_writes_only_into_an_empty_folder_or_a_nin_model_directory(tmp_path):
    run = nin.load_weights("mnist-fast")
    theirs = tmp_path / "theirs"  # another library's model folder
    theirs.mkdir()
    files = {"config.json": '{"architectures": ["ViTForImageClassification"]}', "README.md": "# their card",
             "model.safetensors": "their weights"}  # fmt: skip
    for name, text in files.items():
        (theirs / name).write_text(text)
    with pytest.raises(nin.NinError, match="theirs is not empty and not a nin model directory"):
        run.export(theirs, format="safetensors")
    assert {p.name: p.read_text() for p in theirs.iterdir()} == files  # every file intact
    (theirs / "config.json").unlink()  # weights alone, no description: not nin's either
    with pytest.raises(nin.NinError, match="theirs is not empty and not a nin model directory"):
        run.export(theirs, format="safetensors")
    assert (theirs / "model.safetensors").read_text() == "their weights"
    ours = run.export(tmp_path / "ours", format="safetensors")
    (ours / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # a Hub clone of a nin model
    assert nin.load_weights("fast").export(ours, format="safetensors") == ours  # replaced: it is nin's
    assert nin.load(ours).classes == nin.CLASS_NAMES and (ours / ".gitattributes").is_file()


def test_a_described_state_dict_file_holding_something_else_is_refused(tmp_path):
    path = nin.load_weights("mnist-fast").export(tmp_path / "w.pt")
    torch.save({"model": 1}, path)
    described = json.loads((tmp_path / "w.json").read_text())
    described["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # made to match: a stranger can
    (tmp_path / "w.json").write_text(json.dumps(described))
    with pytest.raises(nin.NinError, match="w.json: the weights file beside it holds no state_dict"):
        nin.load(path)
