"""Class activation maps: exactly the tensors NiN pools, drawn for files and for test images."""

import shutil

import pytest
import torch
from PIL import Image

from nin.api import load
from nin.cli import main
from nin.data.preprocess import to_inputs
from nin.data.registry import load_fashion_mnist
from nin.data.subsets import pick
from nin.errors import NinError
from nin.inference.cam import class_maps
from nin.models.nin import NiN, init_weights


def test_class_maps_are_what_the_network_pools():
    torch.manual_seed(0)
    net = NiN().apply(init_weights).eval()
    x = to_inputs(load_fashion_mnist("test")[0][:4], 224)
    pooled = []
    net[8].register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))  # AdaptiveAvgPool2d
    with torch.inference_mode():
        logits = net(x)
        maps, mean = class_maps(net, x)
    assert maps.shape == (4, 10, 5, 5)
    assert torch.equal(maps, pooled[0])
    torch.testing.assert_close(mean, logits, rtol=1e-5, atol=1e-6)


def test_cam_of_test_images(run_at_131, tmp_path):
    run = load(run_at_131)
    result = run.cam(test_samples=3, out=tmp_path / "cam.png")
    net, config = run.model, run.config
    images, labels = load_fashion_mnist("test")
    chosen = pick(labels, 3)  # drawn from every class, as --test-limit draws
    assert len(set(labels[chosen].tolist())) == 3
    with torch.inference_mode():
        probs = net(to_inputs(images[chosen], config.resize)).softmax(dim=1)
    for i, (row, index) in enumerate(zip(result["images"], chosen.tolist())):
        assert row["image"] == f"test image {index}"
        assert row["prob"] == pytest.approx(probs[i].max().item(), rel=1e-5)
        assert row["true_prob"] == pytest.approx(probs[i, labels[index]].item(), rel=1e-5)
    run.cam(test_samples=1, out=tmp_path / "one.png")
    with Image.open(tmp_path / "cam.png") as three, Image.open(tmp_path / "one.png") as one:
        assert three.format == one.format == "PNG" and three.size[1] > 2.5 * one.size[1]  # a row per image


def test_cam_of_image_files_has_no_true_class(run_at_131, tmp_path):
    png = tmp_path / "boot.png"
    Image.fromarray(load_fashion_mnist("test")[0][0].numpy()).save(png)
    run = tmp_path / "run"
    shutil.copytree(run_at_131, run)
    result = load(run).cam([png])
    assert result["png"] == str(run / "cam.png") and (run / "cam.png").is_file()
    assert set(result["images"][0]) == {"image", "predicted", "prob"}


def test_bad_requests(run_at_131, trained_run, tmp_path):
    run = load(run_at_131)
    with pytest.raises(NinError, match="either image files or --test-samples"):
        run.cam()
    with pytest.raises(NinError, match="either image files or --test-samples"):
        run.cam([tmp_path / "a.png"], test_samples=2)
    with pytest.raises(NinError, match="at most 64 images"):
        run.cam(test_samples=65)
    with pytest.raises(NinError, match="--test-samples -1: give a number of test images, 1 to 64"):
        run.cam(test_samples=-1)
    with pytest.raises(NinError, match="class maps are 1x1.*resize 99 or more"):
        load(trained_run).cam(test_samples=2)  # trained at 67x67


def test_cli(run_at_131, tmp_path, capsys):
    assert main(["cam", str(run_at_131), "--test-samples", "2", "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("test image ") == 2 and "(true: " in out and f"class maps: {tmp_path / 'c.png'}" in out
    assert main(["cam", str(run_at_131)]) == 2
    assert "nin: error: give either image files" in capsys.readouterr().err
