"""The seed notebook's weights in and out: a bare state_dict of its nn.Sequential is a run nin can use,
and `nin export` writes one the notebook loads with `net.load_state_dict(torch.load(path))`."""

import functools
import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

import nin
from helpers import require, require_system
from nin.cli import main
from nin.data.preprocess import to_inputs
from nin.data.registry import load_fashion_mnist
from nin.data.subsets import pick
from nin.errors import NinError
from nin.inference.description import describe
from seed_nin import seed_net


def test_the_seed_notebooks_state_dict_evaluates_predicts_and_maps(tmp_path, capsys):
    torch.manual_seed(0)
    net = seed_net().eval()
    path = tmp_path / "nin.pt"
    torch.save(net.state_dict(), path)  # the notebook's own save
    assert main(["evaluate", str(path), "--resize", "67", "--test-limit", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    images, labels = load_fashion_mnist("test")
    chosen = pick(labels, 50)
    with torch.inference_mode():
        expected = (net(to_inputs(images[chosen], 67)).argmax(1) == labels[chosen]).float().mean().item()
    assert result["test_acc"] == pytest.approx(expected) and result["record"] is None
    run = nin.load(path)  # default: the seed's 224
    assert run.config.resize == 224 and run.config.arch == "nin" and run.metrics == [] and run.test_acc is None
    png = tmp_path / "boot.png"
    Image.fromarray(images[0].numpy()).save(png)
    assert main(["predict", str(path), str(png), "--json"]) == 0
    with torch.inference_mode():
        probs = net(to_inputs(images[:1], 224)).softmax(1)[0]
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    assert top["prob"] == pytest.approx(probs.max().item(), rel=1e-4)
    assert main(["cam", str(path), "--test-samples", "2", "--out", str(tmp_path / "cam.png")]) == 0


def test_export_writes_what_the_seed_notebook_loads(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["export", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"state_dict: {run / 'weights.pt'}"
    net = seed_net()
    net.load_state_dict(torch.load(run / "weights.pt"))  # the notebook's own load (weights_only by default)
    x = to_inputs(load_fashion_mnist("test")[0][:8], 67)
    with torch.inference_mode():
        torch.testing.assert_close(net.eval()(x), nin.load(run).model(x))
    out = tmp_path / "elsewhere.pt"
    assert main(["export", str(run), "--out", str(out), "--format", "state-dict"]) == 0 and out.is_file()


def test_what_is_not_a_known_network_gets_one_clear_error(trained_run, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3, 3)}, path)
    with pytest.raises(
        NinError, match="other.pt: not a nin checkpoint, and a state_dict of a network nin does not know"
    ):
        nin.load(path)
    with pytest.raises(NinError, match="--resize 99: .* is a nin checkpoint, trained at 67x67"):
        nin.load(trained_run, resize=99)
    torch.save(seed_net().state_dict(), path)
    with pytest.raises(NinError, match="resize 20 is too small"):
        nin.load(path, resize=20)


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_onnx_export_matches_pytorch_on_1000_real_test_images(trained_run, tmp_path, capsys):
    """The exported ONNX model through onnxruntime: the logits of 1,000 real test images within 1e-4 of
    PyTorch's, the same predictions, any batch size, and the run's facts in the metadata."""
    onnx = require("onnx")
    from nin.inference.export import OnnxModel

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with warnings.catch_warnings(record=True) as caught:  # nothing for the user to act on: nothing said
        warnings.simplefilter("always")
        assert main(["export", str(run), "--format", "onnx"]) == 0
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert capsys.readouterr().out.strip() == f"ONNX model: {run / 'model.onnx'}"
    model = nin.load(run)
    x = to_inputs(load_fashion_mnist("test")[0][:1000], model.config.resize)
    with torch.inference_mode():
        expected = model.model(x)
    for batch in (x, x[:1]):
        got = OnnxModel(run / "model.onnx")(batch)
        assert (got - expected[: len(batch)]).abs().max() <= 1e-4
        assert torch.equal(got.argmax(1), expected[: len(batch)].argmax(1))
    props = {p.key: p.value for p in onnx.load(run / "model.onnx").metadata_props}
    described = {key: json.loads(value) for key, value in props.items()}
    assert described == describe(model.config, model.spec, model.model.state_dict(), model.record, model.metrics)
    assert described["id2label"]["9"] == "Ankle boot" and described["input_size"] == [1, 67, 67]
    assert described["dataset"] == "fashion-mnist" and described["nin_version"] == nin.__version__


def test_onnx_without_the_export_extra_is_one_clear_error(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "ONNX export needs the export extra: pip install 'nin[export]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_predict_with_an_onnx_model_gives_pytorchs_answer(trained_run, tmp_path, capsys):
    require("onnxruntime")
    png = tmp_path / "boot.png"
    Image.fromarray(load_fashion_mnist("test")[0][0].numpy()).save(png)
    onnx_file = nin.load(trained_run).export(tmp_path / "m.onnx", format="onnx")
    assert main(["predict", str(onnx_file), str(png), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)[0]["top"]
    theirs = nin.load(trained_run).predict([png])[0]["top"]
    assert [t["class"] for t in ours] == [t["class"] for t in theirs]
    assert [t["prob"] for t in ours] == pytest.approx([t["prob"] for t in theirs], abs=1e-5)
    (tmp_path / "bad.onnx").write_text("not a model")
    assert main(["predict", str(tmp_path / "bad.onnx"), str(png)]) == 2
    assert "bad.onnx: not an ONNX model written by nin export" in capsys.readouterr().err


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_a_colour_normalising_network_exports_with_its_mean_and_std_inside_the_graph(tmp_path):
    require("onnxruntime")
    from nin.config import Config
    from nin.data.types import Spec
    from nin.inference.export import OnnxModel, to_onnx
    from nin.models.nin import nin_bn

    torch.manual_seed(0)
    net = nin_bn(width=4, in_channels=3, num_classes=100, normalize=True).eval()
    net[0].mean.copy_(torch.tensor([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1))
    net[0].std.copy_(torch.tensor([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1))
    spec = Spec("cifar100", tuple(f"c{i}" for i in range(100)), 3, 32)
    onnx = OnnxModel(to_onnx(net, Config(arch="nin-bn", width=4, resize=32, normalize=True), spec, tmp_path / "m.onnx"))
    assert onnx.resize == 32 and onnx.spec == spec
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(onnx(x), net(x), atol=1e-4, rtol=0)


@pytest.mark.slow  # not a process of its own, but export + quantization take seconds: out of the quick tier
def test_int8_export_of_a_tiny_network_predicts_as_fp32_does(tmp_path, monkeypatch, capsys):
    """Static int8 quantization (a few calibration images here): quantized operators in the graph, the same
    description in the metadata, the fp32 model's predictions on most test images, and nin predict runs it."""
    onnx = require("onnx")
    from nin.inference import export
    from nin.inference.export import OnnxModel

    monkeypatch.setattr(export, "CALIBRATION", 32)
    run = nin.train("fast", out=tmp_path / "run", width=4, epochs=1, train_limit=512, test_limit=64, device="cpu",
                    precision="fp32")  # fmt: skip
    capsys.readouterr()
    assert main(["export", str(run.path), "--format", "onnx", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip() == f"ONNX model (int8): {run.path / 'model-int8.onnx'}"
    int8, fp32 = run.path / "model-int8.onnx", run.export(format="onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in onnx.load(int8).graph.node}
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(int8).graph.initializer if t.data_type == t.INT8]
    assert weights and all(-64 <= w.min() and w.max() <= 64 for w in weights)  # no int16 saturation without VNNI
    props = lambda path: {p.key: p.value for p in onnx.load(path).metadata_props}  # noqa: E731
    assert props(int8) == props(fp32)
    images = load_fashion_mnist("test")[0][:200]
    x = to_inputs(images, 28)
    agree = (OnnxModel(int8)(x).argmax(1) == OnnxModel(fp32)(x).argmax(1)).float().mean().item()
    assert agree >= 0.9, agree
    png = tmp_path / "boot.png"
    Image.fromarray(images[0].numpy()).save(png)
    assert main(["predict", str(int8), str(png)]) == 0
    assert capsys.readouterr().out.startswith(f"{png}: ")


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory) -> Callable[[str], dict]:
    """A shipped network's fp32 and int8 ONNX exports ({None: path, "int8": path}), made once per module: each
    export takes seconds."""
    require("onnxruntime")
    folder = tmp_path_factory.mktemp("shipped-onnx")

    @functools.cache
    def exports(name: str) -> dict:
        run = nin.load_weights(name)
        return {q: run.export(folder / f"{name}-{q}.onnx", format="onnx", quantize=q) for q in (None, "int8")}

    return exports


@pytest.mark.slow  # two exports and the full test set: seconds each
@pytest.mark.parametrize("name", ["fast", "mnist-fast"])
def test_int8_shipped_weights_stay_within_half_a_point_of_fp32_on_the_full_test_set(name, shipped_onnx):
    from nin.data.registry import load_split
    from nin.inference.evaluate import logits
    from nin.inference.export import OnnxModel

    run = nin.load_weights(name)
    test = load_split(run.spec.dataset, "test")
    accuracy = {}
    for quantize, path in shipped_onnx(name).items():
        model = OnnxModel(path)
        accuracy[quantize] = (logits(model, test.images, 28).argmax(1) == test.labels).float().mean().item()
    assert len(test) == 10_000 and accuracy[None] == pytest.approx(run.card["evaluation"]["test_acc"], abs=2e-4)
    assert abs(accuracy["int8"] - accuracy[None]) <= 0.005, accuracy


@pytest.mark.slow  # 500 images through onnxruntime on an emulated CPU: ~40 s
def test_int8_export_predicts_the_same_on_an_avx2_only_cpu(shipped_onnx):
    """Without VNNI, onnxruntime's u8s8 kernels add pairs of products in int16 and saturate on full-range int8
    weights (an export made on a VNNI CPU lost 0.85 points on an AVX2-only EPYC). The same int8 model, run on
    QEMU's AVX2-only EPYC-Rome (its CPUID shows no AVX-512 and no VNNI), gives this CPU's top-1."""
    require_system("qemu-x86_64")
    script = Path(__file__).parents[2] / "benchmarks" / "int8_cpus.py"
    fp32, int8 = shipped_onnx("fast").values()  # the script's own export is the same call (--onnx skips it)
    done = subprocess.run([sys.executable, str(script), "--test-limit", "500", "--onnx", str(fp32), str(int8),
                           "--json"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["features_emulated"] == {"AVX2": True, "AVX512F": False, "AVX512VNNI": False, "AVX512BF16": False}
    assert result["int8_agreement"] >= 0.998, result  # at most 1 of 500 top-1s differs
    assert abs(result["int8_emulated"] - result["fp32"]) <= 0.005, result
