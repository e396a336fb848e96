"""`nin benchmark`: every form of a model through one inference path, measured and named (no timing asserted)."""

import json
import sys
import types

import pytest

from helpers import require
from nin.cli import main
from nin.inference.benchmark import machine, native_bf16, openvino_forms, render


@pytest.mark.slow  # exports the model to ONNX twice (the dynamo exporter: seconds each)
def test_every_form_is_measured_the_fp32_forms_agree_and_the_table_names_the_fastest(tmp_path, capsys):
    require("onnxruntime")
    png = tmp_path / "forms.png"
    args = ["--weights", "mnist-fast", "--repeats", "3", "--rounds", "2", "--test-limit", "300"]
    assert main(["benchmark", *args, "--json", "--plot", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["form"]: r for r in result["forms"]}
    expected = ["pytorch fp32", *(["pytorch bf16"] if native_bf16() else []), "onnx fp32", "onnx int8"]
    assert list(rows)[: len(expected)] == expected and result["examples"] == 300 and result["batch"] == 256
    for r in rows.values():
        ms, rate = r["latency_ms"], r["images_per_sec"]
        assert 0 < ms["min"] <= ms["median"] <= ms["max"] and 0 < rate["min"] <= rate["median"] <= rate["max"]
        assert 0.9 < r["test_acc"] <= 1 and r["bytes"] > 0
    # the same preprocessing for every form: fp32 in PyTorch and in onnxruntime agree image for image (at most one
    # of 300 may flip on a rounding difference), and match `nin evaluate` on the same images
    assert abs(rows["pytorch fp32"]["test_acc"] - rows["onnx fp32"]["test_acc"]) <= 1 / 300
    assert main(["evaluate", "--weights", "mnist-fast", "--test-limit", "300", "--json",
                 "--plot", str(tmp_path / "cm.png")]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["test_acc"] == rows["pytorch fp32"]["test_acc"]
    assert rows["onnx int8"]["bytes"] < rows["onnx fp32"]["bytes"]
    assert set(result["fastest"].values()) <= set(rows) and png.stat().st_size > 0
    assert ("openvino fp32" in rows) != any(n.startswith(("openvino: left out", "openvino fp32: left out"))
                                            for n in result["notes"])  # fmt: skip
    lines = render(result).splitlines()  # what `nin benchmark` prints without --json
    assert "-core " in lines[0] and "AVX2" in lines[0] and lines[1].startswith("accuracy on 300 test images")
    assert lines[2].split()[:3] == ["form", "bytes", "test"] and lines[3].startswith("pytorch fp32")
    assert lines[-1].startswith("fastest: ") and " at batch 1, " in lines[-1]


def test_machine_names_what_the_cpu_computes_natively():
    cpu = {"cpu": "X", "cpu_count": 2, "avx2": True, "vnni": True, "avx512_bf16": False, "amx": False}
    assert machine(cpu) == "2-core X (AVX2, VNNI; no AVX-512 BF16, AMX)"


@pytest.mark.parametrize("flag", ["--repeats", "--rounds", "--test-limit"])
def test_a_bad_count_is_one_clear_error(capsys, flag):
    assert main(["benchmark", "--weights", "mnist-fast", flag, "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nin: error: {flag}") and err.count("\n") == 1


def test_a_form_openvino_cannot_compile_is_a_note_and_the_others_go_on(tmp_path, monkeypatch):
    """OpenVINO's CPU plugin may lack a kernel for an operation (seen with oneDNN capped to AVX2): that form is
    left out with OpenVINO's reason, the others are measured; not installed: one note."""

    class Core:
        def compile_model(self, path: str, device: str):
            if "int8" in path:
                raise RuntimeError("Exception from core.cpp:132:\nSupported primitive descriptors list is empty "
                                   "for node: node_max_pool2d type: Pooling\n")  # fmt: skip
            return lambda x: [x]

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Core=Core))
    paths = {"fp32": tmp_path / "model-fp32.onnx", "int8": tmp_path / "model-int8.onnx"}
    found, notes = openvino_forms(paths)
    assert list(found) == ["openvino fp32"] and found["openvino fp32"][1] == paths["fp32"]
    assert notes == ["openvino int8: left out, OpenVINO cannot compile it for this CPU (Supported primitive "
                     "descriptors list is empty for node: node_max_pool2d type: Pooling)"]  # fmt: skip
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed: its import fails
    assert openvino_forms(paths) == ({}, ["openvino: left out, not installed (pip install openvino)"])
