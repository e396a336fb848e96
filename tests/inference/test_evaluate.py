import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from nin.api import load
from nin.cli import main
from nin.data.batches import Batches
from nin.data.preprocess import to_inputs
from nin.data.registry import load_fashion_mnist
from nin.data.subsets import pick
from nin.data.types import CLASS_NAMES, Spec
from nin.errors import NinError
from nin.inference.evaluate import confusion_matrix
from nin.training.step import evaluate_accuracy

FIXTURE = Path(__file__).parents[1] / "fixtures" / "v0.1.0" / "run"


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_evaluate_agrees_with_the_in_memory_path(trained_run, tmp_path):
    run = load(trained_run)
    result = run.evaluate(device="cpu", test_limit=1000, plot=tmp_path / "cm.png")
    net, config = run.model, run.config
    images, labels = load_fashion_mnist("test")
    chosen = pick(labels, 1000)  # --test-limit draws every class in proportion, as training's test pass does
    images, labels = images[chosen], labels[chosen]
    expected = evaluate_accuracy(net, Batches(images, labels, 128, config.resize, torch.device("cpu")))
    assert result["test_acc"] == pytest.approx(expected, abs=1e-9)
    # the training run measured the same thing after its last epoch
    last = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["test_acc"] == pytest.approx(last["test_acc"], abs=1e-9)
    matrix = torch.tensor(result["confusion_matrix"])
    assert matrix.sum() == 1000 and matrix.sum(dim=1).tolist() == torch.bincount(labels).tolist() == [100] * 10
    assert list(result["per_class_acc"]) == list(CLASS_NAMES)
    per_class = torch.tensor(list(result["per_class_acc"].values()))
    assert torch.allclose(per_class, matrix.diag() / matrix.sum(dim=1))
    with Image.open(tmp_path / "cm.png") as img:
        assert img.format == "PNG"


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror(trained_run, tmp_path):
    run = load(trained_run)
    net, config = run.model, run.config
    images, labels = load_fashion_mnist("test")
    chosen = pick(labels, 500)
    images, labels = images[chosen], labels[chosen]
    batches = Batches(images, labels, 100, config.resize, torch.device("cpu"))
    net.eval()
    with torch.inference_mode():
        x = torch.cat([x for x, _ in batches])
        expected = (net(x).softmax(1) + net(x.flip(3)).softmax(1)).argmax(1)
    matrix = confusion_matrix(net, batches, 10, tta=True)
    assert torch.equal(matrix, torch.bincount(labels * 10 + expected, minlength=100).reshape(10, 10))
    assert not torch.equal(matrix, confusion_matrix(net, batches, 10))  # the mirror images change some answers
    result = run.evaluate(device="cpu", test_limit=500, plot=tmp_path / "cm.png", tta=True)
    assert result["tta"] and result["test_acc"] == pytest.approx(matrix.diag().sum().item() / 500, abs=1e-9)


def test_predict_on_pngs_written_from_real_test_images(trained_run, tmp_path):
    images, labels = load_fashion_mnist("test")
    paths = []
    for i in range(8):
        path = tmp_path / f"test{i}.png"
        Image.fromarray(images[i].numpy()).save(path)
        paths.append(path)
    run = load(trained_run)
    results = run.predict(paths)
    net, config = run.model, run.config
    with torch.inference_mode():
        probs = net(to_inputs(images[:8], config.resize)).softmax(dim=1)
    for r, p in zip(results, probs):
        top = p.topk(3)
        assert [t["class"] for t in r["top"]] == [CLASS_NAMES[i] for i in top.indices]
        assert [t["prob"] for t in r["top"]] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_any_size_and_mode_becomes_28x28_grayscale(tmp_path):
    rgba = tmp_path / "big.png"
    Image.new("RGBA", (300, 200), (255, 255, 255, 128)).save(rgba)
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (0, 0, 0)).save(jpeg)
    fashion = Spec().preprocess(28)
    assert fashion.load(rgba).shape == (1, 28, 28) and fashion.load(rgba).dtype == torch.uint8
    assert fashion.load(rgba).unique().tolist() == [128]  # half-transparent white over black
    assert int(fashion.load(jpeg).max()) == 0


def test_unreadable_images_give_one_clear_error(trained_run, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(NinError, match="notes.png: not a supported image format"):
        load(trained_run).predict([text])
    with pytest.raises(NinError, match="missing.png: no such image file"):
        load(trained_run).predict([tmp_path / "missing.png"])


def test_an_error_no_damaged_file_raises_surfaces_as_itself(tmp_path, monkeypatch):
    """Only what torch.load raises for damaged or foreign bytes becomes "not a readable nin checkpoint": another
    exception (an ImportError, as a broken install gives) is not the file's fault, and surfaces as itself."""
    path = tmp_path / "checkpoint.pt"
    torch.save({}, path)

    def broken(*args, **kwargs):
        raise ImportError("a broken install")

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(ImportError, match="a broken install"):
        load(path)


def test_checkpoints_that_are_not_ours(trained_run, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(NinError, match="not a nin checkpoint"):
        load(foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained_run / "checkpoint.pt").read_bytes()[:5000])
    with pytest.raises(NinError, match="not a readable nin checkpoint"):
        load(truncated)
    pickled = tmp_path / "code.pt"
    torch.save({"format": "nin-checkpoint-v2", "evil": object()}, pickled)
    with pytest.raises(NinError, match="not a readable nin checkpoint"):  # weights_only refuses arbitrary objects
        load(pickled)
    older = tmp_path / "older.pt"
    torch.save({**torch.load(trained_run / "checkpoint.pt", weights_only=True), "format": "nin-checkpoint-v1"}, older)
    with pytest.raises(NinError, match="nin-checkpoint-v1 checkpoint from another version of nin"):
        load(older)
    with pytest.raises(NinError, match="no such checkpoint"):
        load(tmp_path / "nothing-here")


def test_a_checkpoint_from_before_datasets_is_fashion_mnist(trained_run, tmp_path):
    """Checkpoints written before runs stored their data's spec have no "data" entry: Fashion-MNIST."""
    from nin.training.checkpoint import digest

    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    del state["data"]
    state["sha256"] = digest(state)
    torch.save(state, tmp_path / "old.pt")
    old = load(tmp_path / "old.pt")
    assert old.spec.dataset == "fashion-mnist" and old.classes == CLASS_NAMES
    assert old.evaluate(test_limit=100, plot=tmp_path / "c.png")["test_acc"] == load(trained_run).evaluate(
        test_limit=100, plot=tmp_path / "d.png")["test_acc"]  # fmt: skip


@pytest.mark.parametrize("entry", ["data", "config"])
def test_a_checkpoint_from_a_newer_nin_is_one_clear_error(tmp_path, capsys, entry):
    """A key this nin does not know (a newer nin's setting, or a new field of the data's spec) is one error
    naming the file and the key, from nin.load, nin evaluate and nin train --resume; not a TypeError."""
    from nin.training.checkpoint import digest

    state = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)  # a small run of nin 0.1.0
    state[entry]["crop_size"] = 24
    state["sha256"] = digest(state)
    newer = tmp_path / "run" / "checkpoint.pt"
    newer.parent.mkdir()
    torch.save(state, newer)
    with pytest.raises(NinError, match=f"{newer}: .*crop_size"):
        load(newer)
    for args in (["evaluate", str(newer)], ["train", "--resume", str(newer.parent)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nin: error: {newer}: ") and "crop_size" in err


def test_a_bare_state_dict_of_colour_data_predicts_but_cannot_be_tested(tmp_path):
    from nin.models.nin import nin_bn

    torch.save(nin_bn(width=4, in_channels=3, num_classes=5).state_dict(), tmp_path / "w.pt")
    run = load(tmp_path / "w.pt")
    assert run.spec.channels == 3 and run.classes == ("0", "1", "2", "3", "4")
    with pytest.raises(NinError, match="a bare state_dict says nothing of the data it was trained on"):
        run.evaluate(plot=tmp_path / "c.png")
