"""The benchmarks' quick modes run end to end and print every figure (no timing is asserted); the GPU
script's chosen recipe is the best preset."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import require
from nin.cli import config_of, get_args_parser
from nin.config import load_preset

pytestmark = pytest.mark.slow  # runs the benchmark scripts in processes of their own

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench.py"


def test_bench_quick_prints_every_figure():
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for label in ("matmul peak fp32", "matmul peak bf16", "reference loop (seed path)", "our loop (auto)",
                  "speed-up, end to end", "our train step"):  # fmt: skip
        assert any(line.startswith(label) for line in lines), label
    assert "of the fp32 peak" in result.stdout and "of the bf16 peak" in result.stdout and "peak RSS" in result.stdout
    figures = json.loads(lines[-1])
    runs = figures["runs"]
    assert all(r["gflops"] > 0 for r in runs["fp32"] + runs["bf16"])
    for loop in ("reference", "ours"):
        (run,) = runs[loop]
        assert 0 < run["step_seconds"] < run["seconds"] and run["rss_mb"] > 0
    assert figures["config"]["train_limit"] == 64 and figures["train_gflop_per_image"] > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_benchmark_prints_every_variant(precision: str):
    steps = Path(__file__).parents[1] / "benchmarks" / "steps.py"
    result = subprocess.run([sys.executable, str(steps), "--widths", "4", "--steps", "2", "--repeats", "1",
                             "--batch", "16", "--precision", precision],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"batch 16, {precision}, 28x28" in result.stdout.splitlines()[0]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("4", "on", "NHWC"), ("4", "on", "NCHW"), ("4", "off", "NHWC")]
    assert all(float(r[3]) > 0 and r[5] == "/" for r in rows)


def test_best_preset_is_the_candidate_the_gpu_script_chose():
    """benchmarks/gpu.sh trains its candidates as `nin train $best <candidate>` on top of the default
    (fast) preset; the winner on validation, w128-erase-30, must be exactly what --preset best runs."""
    script = (Path(__file__).parents[1] / "benchmarks" / "gpu.sh").read_text()
    best = " ".join(re.findall(r'^best\+?="([^"]*)"', script, re.MULTILINE))
    chosen = re.search(r'\[w128-erase-30\]="([^"]*)"', script).group(1)
    args = get_args_parser().parse_args(["train", *best.split(), *chosen.split()])
    assert config_of(args)[0] == load_preset("best")  # args name no preset: on top of the default, fast


def test_precision_benchmark_prints_both_precisions_and_the_ratio():
    script = Path(__file__).parents[1] / "benchmarks" / "precision.py"
    result = subprocess.run([sys.executable, str(script), "--resize", "67", "--batch", "8", "--steps", "1",
                             "--repeats", "2"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("seed NiN, batch 8 at 67x67, 1 steps x 2 repeats;")
    fp32, bf16 = (re.findall(r"[\d,.]+", line.split(maxsplit=1)[1]) for line in lines[2:4])
    ratio = re.findall(r"[\d.]+", lines[4].removeprefix("bf16 / fp32"))
    assert lines[2].startswith("fp32 ") and lines[3].startswith("bf16 ") and len(fp32) == len(bf16) == 3
    assert all(float(v.replace(",", "")) > 0 for v in fp32 + bf16) and len(ratio) == 3


def test_guard_benchmark_prints_both_loops_and_the_cost():
    script = Path(__file__).parents[1] / "benchmarks" / "guard.py"
    result = subprocess.run([sys.executable, str(script), "--steps", "2", "--rounds", "2", "--batch", "8"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("nin-bn width 16, batch 8, cpu") and "2 rounds of 2 steps" in lines[0]
    assert [line[:16].strip() for line in lines[1:]] == ["no read", "read every step", "read cost"]
    assert all(len(line[16:].split(" / ")) == 3 for line in lines[1:])


def test_inference_benchmark_prints_both_engines_for_both_networks():
    require("onnxruntime")
    script = Path(__file__).parents[1] / "benchmarks" / "inference.py"
    result = subprocess.run([sys.executable, str(script), "--calls", "2", "--rounds", "1", "--batch", "4"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("fast", "pytorch"), ("fast", "onnxruntime"), ("d2l", "pytorch"),
                                            ("d2l", "onnxruntime")]  # fmt: skip
    assert all(float(r[2]) > 0 and r[3] == "ms" and float(r[4]) > 0 and float(r[6].replace(",", "")) > 0 for r in rows)
    assert "torchvision is not installed" not in result.stderr  # the exporter's noise is silenced


def test_folder_benchmark_writes_the_folders_and_prints_both_loads(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "folder.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "png"), "--limit", "30"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("wrote 60 PNG files") and "60 images, stored at 28" in lines[1]
    assert lines[2].startswith("first load (decode every file, write the cache): ") and "MB" in lines[2]
    assert lines[3].startswith("cached load: ") and len(list((tmp_path / "png" / "test").iterdir())) == 10


def test_photo_folders_and_the_streaming_benchmark_nin_half(tmp_path):
    """benchmarks/photos.py writes a tiny train/ + val/ JPEG folder; benchmarks/stream.py measures nin's
    loader on it (torchvision's half runs only in the benchmark's own venv)."""
    bench = Path(__file__).parents[1] / "benchmarks"
    made = subprocess.run([sys.executable, str(bench / "photos.py"), str(tmp_path / "p"), "--sizes", "24", "--val", "6",
                           "--px", "40", "60"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(list((tmp_path / "p" / "24" / "train").rglob("*.JPEG"))) == 24
    out = tmp_path / "figures.json"
    command = [sys.executable, str(bench / "stream.py"), str(tmp_path / "p" / "24"), "--loaders", "nin", "--steps", "2",
               "--json", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["images"] == 24 and row["images_per_sec"] > 0 and row["pss_mb"] > 0 and row["rss_mb"] >= row["pss_mb"]
    assert "images/s  peak PSS" in result.stdout


def test_serve_load_benchmark_prints_a_row_per_client_count_beside_the_ceiling(tmp_path):
    require("onnxruntime")
    require("uvicorn")
    script = Path(__file__).parents[1] / "benchmarks" / "serve_load.py"
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(script), "--clients", "1", "3", "--seconds", "0.5", "--images", "20",
                             "--ceiling-seconds", "0.2", "--cam", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "20 Fashion-MNIST test PNGs, with the class map; 0.5 s per row" in lines[0]
    assert lines[1].split()[:5] == ["clients", "requests", "req/s", "ceiling/s", "of"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "3"]
    figures = json.loads(out.read_text())
    assert figures["cam"] and [r["clients"] for r in figures["rows"]] == [1, 3]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["rss_end_mb"] > 0
               and r["ceiling_per_second"] > 0 for r in figures["rows"])  # fmt: skip
