"""The preprocessing contract (nin/data/preprocess.py): the same image gives the same numbers in training's test
pass, `nin evaluate`, `nin predict`, every model form (run directory, model directory, ONNX) and `nin serve`,
for IDX data, a folder in memory and a streamed folder (train/ + val/, train/ + test/), with photos of mixed
sizes and aspect ratios among the held-out files: an EXIF-rotated JPEG, an RGBA PNG and a 16-bit PNG."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nin
from helpers import require
from nin.cli import main
from nin.data.preprocess import Preprocess, prepare
from nin.data.registry import load_split
from nin.data.subsets import pick

CLASSES = ("blue", "green", "red")
TINY = dict(preset="fast", width=4, epochs=1, batch_size=16, lr=0.05, device="cpu", precision="fp32", seed=0)


def photo(rng: np.random.Generator, label: int, width: int, height: int) -> Image.Image:
    """A noisy photo whose dominant colour is its class, with a brighter blob off-centre (crops matter)."""
    pixels = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    pixels[..., 2 - label] += 120
    y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[y : y + height // 3, x : x + width // 3] //= 2
    return Image.fromarray(pixels, "RGB")


def photo_folder(root: Path, held_out: str, per_class: int = 14) -> Path:
    """DIR/train/<class>/ and DIR/<held_out>/<class>/ JPEGs and PNGs of mixed sizes and aspect ratios; the held-out
    split also has an EXIF-rotated JPEG, an RGBA PNG and a 16-bit grayscale PNG."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (64, 64), (36, 80), (120, 90), (50, 50), (90, 33)]
    for split, n in (("train", per_class), (held_out, per_class // 2)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = photo(rng, label, *sizes[i % len(sizes)])
                img.save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    odd = root / held_out / "red"
    rotated = photo(rng, 2, 80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the decoder turns it upright
    rotated.save(odd / "rotated.jpg", exif=exif)
    rgba = photo(rng, 2, 60, 45).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(odd / "rgba.png")
    wide = np.asarray(photo(rng, 2, 48, 48).convert("L")).astype("<u2") * 257
    Image.frombytes("I;16", (48, 48), wide.tobytes()).save(odd / "gray16.png")
    return root


def held_out_files(root: Path, split: str) -> tuple[list[Path], list[int]]:
    files = sorted(p for p in (root / split).rglob("*") if p.is_file())
    return files, [CLASSES.index(p.parent.name) for p in files]


def top1(results: list[dict], classes: tuple[str, ...]) -> list[int]:
    return [classes.index(r["top"][0]["class"]) for r in results]


def evaluated(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def predicted(capsys, model: str, files: list[Path]) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", model, *map(str, files), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def agree(a: list[int], b: list[int]) -> bool:
    """Top-1s that agree but for at most one image (fp32 forms differ in the last bits: a near-tie may flip)."""
    return sum(x != y for x, y in zip(a, b, strict=True)) <= 1


@pytest.mark.slow  # trains three tiny runs and exports them
@pytest.mark.parametrize(("stream", "held_out"), [(False, "val"), (True, "val"), (True, "test")])
def test_a_folder_run_gives_the_same_numbers_everywhere(tmp_path, capsys, stream, held_out):
    """Training's test pass, nin evaluate and nin predict over the same held-out files agree to one image; the
    run directory, its model directory, its ONNX export and nin serve give the same top-1 on every file."""
    root = photo_folder(tmp_path / "photos", held_out)
    flags = {"stream": True, "resize": 24} if stream else {"image_size": 24, "resize": 24}
    run = nin.train(dataset="folder", data_dir=root, out=tmp_path / "run", **TINY, **flags)
    assert run.spec.crop == ("center" if stream else "squash")
    files, labels = held_out_files(root, held_out)
    n = len(files)
    trained = run.metrics[-1]["test_acc"]
    evaluation = evaluated(capsys, str(run.path))
    assert evaluation["examples"] == n and evaluation["test_acc"] == pytest.approx(trained, abs=1e-9)
    here = top1(predicted(capsys, str(run.path), files), run.classes)
    accuracy = sum(p == y for p, y in zip(here, labels)) / n
    assert abs(accuracy - evaluation["test_acc"]) <= 1 / n + 1e-9, (accuracy, evaluation["test_acc"])

    model_dir, onnx = tmp_path / "model", tmp_path / "model.onnx"
    assert main(["export", str(run.path), "--format", "safetensors", "--out", str(model_dir)]) == 0
    assert main(["export", str(run.path), "--format", "onnx", "--out", str(onnx)]) == 0
    description = json.loads((model_dir / "config.json").read_text())["preprocessing"]
    assert Preprocess.from_dict(description, "config.json") == run.preprocess
    assert top1(predicted(capsys, str(model_dir), files), run.classes) == here
    assert agree(top1(predicted(capsys, str(onnx), files), run.classes), here)
    assert evaluated(capsys, str(model_dir), "--data-dir", str(root))["test_acc"] == evaluation["test_acc"]

    TestClient = require("starlette.testclient").TestClient

    from nin.serve.app import app

    served = []
    with TestClient(app(nin.load(model_dir)), base_url="http://127.0.0.1:8000") as client:
        for f in files:
            response = client.post("/predict", files={"image": (f.name, f.read_bytes())})
            assert response.status_code == 200, response.text
            served.append(run.classes.index(response.json()["top"][0]["class"]))
    assert served == here


@pytest.mark.slow  # trains a tiny run
def test_an_idx_run_gives_the_same_numbers_as_its_test_images_saved_as_files(tmp_path, capsys):
    """--test-limit draws every class (the same images in training and in evaluate); predict on those images
    saved as PNG files scores what training's test pass scored."""
    run = nin.train(out=tmp_path / "run", train_limit=600, test_limit=150, **TINY)
    test = load_split("fashion-mnist", "test")
    chosen = pick(test.labels, 150)
    assert test.labels[chosen].bincount(minlength=10).tolist() == [15] * 10  # every class in proportion
    files = []
    for i in chosen.tolist():
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(files[-1])
    evaluation = evaluated(capsys, str(run.path), "--test-limit", "150")
    assert evaluation["test_acc"] == pytest.approx(run.metrics[-1]["test_acc"], abs=1e-9)
    here = top1(predicted(capsys, str(run.path), files), run.classes)
    accuracy = sum(p == int(test.labels[i]) for p, i in zip(here, chosen.tolist())) / len(files)
    assert accuracy == pytest.approx(evaluation["test_acc"], abs=1 / 150 + 1e-9)


def test_squash_and_center_crop_are_what_their_names_say(tmp_path):
    """squash keeps the whole image (a wide image's left edge stays); center keeps the middle 7/8 of the
    shorter side (the edges go), as torchvision's Resize(256) + CenterCrop(224)."""
    pixels = np.zeros((32, 64), dtype=np.uint8)
    pixels[:, :8] = 255  # a white band at the left edge
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    squashed, centred = prepare(path, 1, 16, "squash"), prepare(path, 1, 16, "center")
    assert squashed[0, :, 0].min() == 255 and centred[0, :, 0].max() == 0
    assert Preprocess(1, 224, 224, "center").resize_size == 256
    with pytest.raises(nin.NinError, match="out of range"):
        Preprocess.from_dict({**Preprocess().to_dict(), "crop": "zoom"}, "config.json")


def test_file_objects_and_paths_give_the_same_input(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.arange(40 * 30, dtype=np.uint8).reshape(30, 40) % 251).save(path)
    upload = io.BytesIO(path.read_bytes())
    upload.name = "upload.png"
    p = Preprocess(1, 28, 56, "squash")
    assert torch.equal(p([path]), p([upload])) and p([path]).shape == (1, 1, 56, 56)
