"""`--dataset folder`: class-per-folder PNG/JPEG trees, decoded once into uint8 batches and cached."""

import os

import pytest
import torch
from PIL import Image

import nin
from nin.cli import main
from nin.data import folder as folder_module
from nin.data.registry import load_fashion_mnist, load_split
from nin.errors import NinError


def write_fashion_mnist(root, per_class_train: int = 20, per_class_test: int = 5) -> None:
    """The first Fashion-MNIST images of each class as 28x28 PNGs: root/{train,test}/<class>/<n>.png."""
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        x, y = load_fashion_mnist(split)
        for c in range(10):
            folder = root / split / nin.CLASS_NAMES[c].replace("/", "-")
            folder.mkdir(parents=True)
            for i in (y == c).nonzero().flatten()[:per_class].tolist():
                Image.fromarray(x[i].numpy()).save(folder / f"{i:05d}.png")


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_fashion_mnist(root)
    return root


def test_png_folders_hold_exactly_the_idx_pixels(images):
    train = load_split("folder", "train", images, image_size=28)
    x, y = load_fashion_mnist("train")
    assert train.images.shape == (200, 1, 28, 28) and train.classes == tuple(
        sorted(n.replace("/", "-") for n in nin.CLASS_NAMES)
    )
    names = sorted(n.replace("/", "-") for n in nin.CLASS_NAMES)
    first = sorted((images / "train" / names[0]).iterdir())[0]
    index = int(first.stem)
    assert torch.equal(train.images[0, 0], x[index])  # lossless: the same bytes as the IDX file
    assert train.labels[0] == 0 and nin.CLASS_NAMES[y[index]].replace("/", "-") == names[0]


def test_any_size_and_mode_and_a_mix_becomes_rgb(tmp_path):
    root = tmp_path / "mixed"
    for c, (mode, size) in {"a": ("L", (40, 30)), "b": ("RGB", (16, 16)), "c": ("RGBA", (64, 64))}.items():
        (root / "train" / c).mkdir(parents=True)
        Image.new(mode, size, (200,) * len(mode)).save(root / "train" / c / "x.png")
    Image.new("RGB", (50, 50), (255, 0, 0)).save(root / "train" / "b" / "y.jpg")
    data = load_split("folder", "train", root, image_size=12)
    assert data.images.shape == (4, 3, 12, 12) and data.classes == ("a", "b", "c")
    assert torch.equal(data.images[0], torch.full((3, 12, 12), 200, dtype=torch.uint8))  # gray in all channels
    assert data.images[2, 0].float().mean() > 240 and data.images[2, 1].float().mean() < 15  # the red JPEG
    gray = tmp_path / "gray"
    (gray / "train" / "a").mkdir(parents=True)
    Image.new("L", (9, 9)).save(gray / "train" / "a" / "x.png")
    assert load_split("folder", "train", gray, image_size=12).images.shape == (1, 1, 12, 12)


def test_the_second_load_comes_from_the_cache_until_a_file_changes(images, monkeypatch):
    decoded = []
    real = folder_module._decode
    monkeypatch.setattr(folder_module, "_decode", lambda *a: decoded.append(a[0]) or real(*a))
    first = load_split("folder", "test", images, image_size=28)
    assert len(decoded) == 50
    again = load_split("folder", "test", images, image_size=28)
    assert len(decoded) == 50 and torch.equal(again.images, first.images)  # nothing decoded: cached
    touched = sorted((images / "test" / "Bag").iterdir())[0]
    os.utime(touched, ns=(0, 0))
    load_split("folder", "test", images, image_size=28)
    assert len(decoded) == 100  # one file's time changed: decoded again
    load_split("folder", "test", images, image_size=20)
    assert len(decoded) == 150  # another stored size: another cache entry


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "train" / "Bag" / "0.png").write_text("no"), r"train/Bag/0.png: not a supported image format"),
        (lambda r: (r / "train" / "Empty").mkdir(), r"train/Empty: an empty class folder"),
        (
            lambda r: (r / "test" / "Cat").mkdir() or Image.new("L", (28, 28)).save(r / "test" / "Cat" / "c.png"),
            r"class folder\(s\) Cat are not in train/",
        ),
    ],
    ids=["unreadable", "empty-class", "unknown-test-class"],
)
def test_bad_folders_give_one_clear_error(images, damage, message):
    damage(images)
    with pytest.raises(NinError, match=message):
        nin.data.load("folder", images, image_size=28)


def test_unreadable_images_can_be_skipped_and_counted(images, capsys):
    (images / "train" / "Bag" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = load_split("folder", "train", images, image_size=28, skip_bad_images=True)
    assert len(data) == 200 and "skipped 1 unreadable image(s)" in capsys.readouterr().out


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_train_only_tests_on_the_held_out_split(images, tmp_path):
    for f in (images / "test").rglob("*.png"):
        f.unlink()
    for d in (images / "test").iterdir():
        d.rmdir()
    (images / "test").rmdir()
    settings = dict(dataset="folder", image_size=28, epochs=1, device="cpu", precision="fp32")
    with pytest.raises(NinError, match="no test/ or val/ folder; add one, or hold out"):
        nin.train("fast", out=tmp_path / "no", data_dir=images, **settings)
    run = nin.train("fast", out=tmp_path / "run", data_dir=images, val_split=40, **settings)
    assert "val_acc" not in run.metrics[-1]  # the held-out images are the test set
    assert run.evaluate()["examples"] == 40 and run.evaluate()["test_acc"] == pytest.approx(run.test_acc)


@pytest.mark.slow
def test_every_command_after_training_on_a_folder(images, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "fast", "--dataset", "folder", "--data-dir", str(images), "--image-size",
                 "28", "--epochs", "1", "--out", str(out), "--device", "cpu", "--precision", "fp32"]) == 0  # fmt: skip
    assert main(["summary", "--dataset", "folder", "--data-dir", str(images), "--preset", "fast"]) == 0
    # the run remembers its folder: no --data-dir from here on
    assert main(["train", "--resume", str(out)]) == 0 and "nothing left to train" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--json"]) == 0
    assert '"dataset": "folder"' in capsys.readouterr().out
    bag = sorted((images / "test" / "Bag").iterdir())[0]
    assert main(["predict", str(out), str(bag)]) == 0
    assert main(["cam", str(out), "--test-samples", "4"]) == 0 and (out / "cam.png").exists()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()
    assert "Bag" in capsys.readouterr().out


def test_a_gray_training_set_with_a_colour_test_image_tests_in_gray(tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), 100).save(root / split / c / "x.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "test" / "b" / "red.png")
    train, _, test = nin.data.splits(nin.Config(dataset="folder", image_size=8), root)
    assert train.images.shape[1] == 1 and test.images.shape == (3, 1, 8, 8)
    assert test.images[1].unique().tolist() == [76]  # red as Pillow makes it gray: 255 * 0.299


def test_data_that_is_not_the_runs_own_is_refused(images, tmp_path):
    run = nin.train("fast", out=tmp_path / "run", data_dir=images, dataset="folder", image_size=28, epochs=1,
                    train_limit=64, device="cpu", precision="fp32")  # fmt: skip
    (images / "train" / "Aardvark").mkdir()
    Image.new("L", (28, 28)).save(images / "train" / "Aardvark" / "a.png")  # sorts first: every index shifts
    with pytest.raises(NinError, match="are not the ones the run was trained on"):
        run.evaluate()
    with pytest.raises(NinError, match="trained on 1-channel data of 10 classes .* 11 classes"):
        nin.train(resume=run.path)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("I;16", (4, 4), 32768).save(tmp_path / "train" / "a" / "half.png")
    data = load_split("folder", "train", tmp_path, image_size=4)
    assert data.images.shape == (1, 1, 4, 4) and data.images.unique().tolist() == [128]


def test_a_class_without_test_images_gets_no_accuracy(images, tmp_path):
    for f in (images / "test" / "Bag").iterdir():
        f.unlink()
    (images / "test" / "Bag").rmdir()
    run = nin.train("fast", out=tmp_path / "run", data_dir=images, dataset="folder", image_size=28, epochs=1,
                    device="cpu", precision="fp32")  # fmt: skip
    per_class = run.evaluate()["per_class_acc"]
    assert "Bag" not in per_class and len(per_class) == 9 and len(run.classes) == 10
