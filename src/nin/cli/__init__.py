"""The `nin` command: summary, train, tune, sweep, benchmark, evaluate, predict, cam, compare, report, export,
weights, serve.

A thin layer over the library's API."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import sys
from functools import partial
from pathlib import Path

from nin.api import FORMATS
from nin.cli.choose import add_choose, benchmark, tune
from nin.cli.flags import (
    add_config_flags,
    add_data_dir,
    add_model,
    add_resize,
    add_run_flags,
    config_of,
    images_of,
    load_model,
    settings_of,
)
from nin.config import DEVICES, FIELDS, Config, Recipe, load_preset
from nin.errors import NinError
from nin.runtime import teardown
from nin.training.rundir import new_run_path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nin",
        description="d2l's Network in Network on Fashion-MNIST, MNIST, CIFAR and your own images.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser = partial(commands.add_parser, allow_abbrev=False)  # --epoch must not mean --epochs

    p = commands.add_parser("summary", help="layers, output shapes, parameters and MACs")
    p.add_argument("--preset", help="the network of a preset, at its resize (default: the seed's NiN)")
    for name in ("arch", "width", "resize", "dataset"):
        field = FIELDS[name]
        p.add_argument(f"--{name}", type=type(field.default), choices=field.metadata["choices"] or None,
                       help=f"default: the preset's; {field.metadata['help']}")  # fmt: skip
    add_data_dir(p)

    p = commands.add_parser(
        "train",
        help="train NiN (on Fashion-MNIST, or --dataset mnist, cifar10, cifar100, folder)",
        description="Settings come from the preset (or config file), then from the flags.",
    )
    add_run_flags(p)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--out", type=Path, help="run directory (default runs/<preset>-<date>-<time>)")
    p.add_argument("--force", action="store_true", help="replace the nin run in a non-empty --out (its files are "
                   "removed)")  # fmt: skip
    p.add_argument("--auto-resume", action="store_true", help="continue the run with these settings in --out (a "
                   "finished one: nothing to do), or start it if --out holds none (for torchrun "
                   "--max-restarts)")  # fmt: skip
    add_data_dir(p)

    p = commands.add_parser(
        "sweep",
        help="train one recipe with seeds 0..N-1: how reliably does it converge?",
        description="Settings as for train. Prints each seed's test accuracy, then min/median/max and the "
        "number of failed runs (diverged, or test accuracy under 5 x chance: 0.5 for 10 classes); writes "
        "sweep.json to --out.",
    )
    add_run_flags(p)
    p.add_argument("--seeds", type=int, default=20, help="how many seeds, from 0 (default 20)")
    p.add_argument("--out", type=Path, help="directory for the runs and sweep.json (default runs/sweep-<preset>-...)")
    add_data_dir(p)

    add_choose(commands)

    p = commands.add_parser("evaluate", help="test accuracy, per-class accuracy and a confusion matrix PNG")
    add_model(p)
    add_resize(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--plot", type=Path, help="confusion matrix PNG (default: confusion_matrix.png beside the checkpoint)"
    )
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument(
        "--test-limit", type=int, default=0, help="evaluate on N test images only, drawn from every class in proportion"
    )
    p.add_argument(
        "--tta", action="store_true", help="flip test-time augmentation: average over each image and its mirror"
    )
    add_data_dir(p)

    p = commands.add_parser("predict", help="top-3 classes for PNG/JPEG images")
    add_model(p, "RUN_DIR|MODEL_DIR|CHECKPOINT|MODEL.onnx")
    add_resize(p)
    p.add_argument("images", type=Path, nargs="*", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = commands.add_parser("cam", help="class activation maps of images or test images, as a PNG grid")
    add_model(p)
    add_resize(p)
    p.add_argument("images", type=Path, nargs="*", metavar="IMAGE")
    p.add_argument(
        "--test-samples", type=int, default=0, metavar="N", help="N test images instead, drawn from every class"
    )
    p.add_argument("--out", type=Path, help="the PNG (default: cam.png beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_data_dir(p)

    p = commands.add_parser(
        "compare",
        help="NiN vs LeNet, AlexNet, VGG-11 and d2l's NiN exercises, on one budget",
        description="Trains each model on the same images with the same recipe; writes compare.json, "
        "compare.md (a markdown table) and compare.png (bar charts) to --out.",
    )
    p.add_argument("--models", default="all", help="comma-separated model names (default all; a wrong name lists them)")
    add_config_flags(p, Recipe)
    p.add_argument("--out", type=Path, help="output directory (default runs/compare-<date>-<time>); a run "
                   "directory works too, and its report then shows the comparison")  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite an earlier comparison in --out")
    add_data_dir(p)

    p = commands.add_parser("report", help="one self-contained HTML page about a run")
    add_model(p, "RUN_DIR")
    add_resize(p)
    p.add_argument("--out", type=Path, help="the HTML file (default: report.html in the run directory)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument(
        "--test-limit", type=int, default=0, help="evaluate on N test images only, drawn from every class in proportion"
    )
    add_data_dir(p)

    p = commands.add_parser("export", help="the trained network as a plain state_dict (the seed's), a safetensors "
                            "model directory (config.json, model card) or ONNX")  # fmt: skip
    add_model(p)
    p.add_argument("--format", default="state-dict", choices=FORMATS, help="default: state-dict (with its description "
                   "beside it, NAME.json); safetensors: the directory --out with model.safetensors, config.json and "
                   "README.md")  # fmt: skip
    p.add_argument("--quantize", choices=("int8",), help="onnx only: int8 (static quantization, calibrated on 300 "
                   "training images)")  # fmt: skip
    p.add_argument("--out", type=Path, help="the file, or directory for safetensors (default: weights.pt, model.onnx "
                   "or model-int8.onnx in the run directory)")  # fmt: skip
    add_data_dir(p)
    add_resize(p)

    p = commands.add_parser("weights", help="the trained weights that ship with nin, with their model cards")
    p.add_argument("name", nargs="?", help="one of them (default: all)")
    p.add_argument("--json", action="store_true", help="print the model cards as JSON")

    p = commands.add_parser("serve", help="a local web page and JSON API: top-3 classes and class maps of images")
    add_model(p)
    add_resize(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0: any free port (printed)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME", help="another name clients reach "
                   "this server by (a DNS name, a proxy's); requests naming any other Host are refused")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    keep_freed_memory()
    commands = {"summary": summary, "train": train, "tune": tune, "benchmark": benchmark, "evaluate": evaluate,
                "predict": predict, "cam": cam, "compare": compare, "report": report, "sweep": sweep, "export": export,
                "weights": weights, "serve": serve}  # fmt: skip
    code = 1  # an unexpected exception: its traceback is printed as Python does
    try:
        code = commands[args.command](args)
    except (NinError, OSError) as e:  # OSError: a path that cannot be written or read
        print(f"nin: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("nin: interrupted", file=sys.stderr)
        code = 130
    finally:
        left = "torch.distributed" in sys.modules and teardown(wait=code == 0)
    if left:
        # a torchrun worker exits at once after leaving its process group: the interpreter's shutdown could
        # run gloo's C++ destructors and abort ("terminate called without an active exception"), turning a
        # finished run into a failed job
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (glibc only; returns whether it applied).

    A training step allocates its activations afresh and frees them after the backward pass. By
    default glibc hands large freed blocks back to the kernel (mmap under 32 MB, and trimming the heap
    top), so the next step page-faults the same memory back in, page by page. Here: blocks up to 32 MB
    come from the heap and the heap is never trimmed. Measured on the fast preset (1 epoch, off and
    on alternating, 3 runs each, 2-core CPU): 1,629 -> 1,732 training images/s (medians), process
    46.7 -> 43.5 s. The CLI sets it (it owns the process); the library leaves the allocator alone.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


def summary(args: argparse.Namespace) -> int:
    from nin.data.registry import shape_of
    from nin.models.nin import check_resize, layer_summary
    from nin.models.registry import build

    config = load_preset(args.preset) if args.preset else Config()
    config = dataclasses.replace(config, **{k: getattr(args, k) for k in ("arch", "width", "resize", "dataset")
                                            if getattr(args, k) is not None})  # fmt: skip
    channels, classes = shape_of(config.dataset, args.data_dir)
    net = build(config.arch, config.dropout, config.width, channels, classes, config.normalize)
    check_resize(net, config.resize)
    size = config.resize
    print(f"{config.arch} for {config.dataset}: {channels} channel(s), {classes} classes")
    rows = layer_summary(net, size, channels)
    print(f"{'layer':<22}{'output shape':<20}{'params':>12}{'MACs':>15}")
    for r in rows:
        print(f"{r['name']:<22}{str(r['output_shape']):<20}{r['params']:>12,}{r['macs']:>15,}")
    params, macs = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
    print(f"{'total':<42}{params:>12,}{macs:>15,}")
    print(f"{params:,} parameters, {macs / 1e9:.3f} GMAC per {size}x{size} image")
    return 0


def train(args: argparse.Namespace) -> int:
    from nin.api import train as run_training
    from nin.runtime import is_main_process
    from nin.training.guards import Stopped

    try:
        run_training(args.config or args.preset, args.out, args.data_dir, args.resume, args.force,
                     args.auto_resume, **settings_of(args))  # fmt: skip
    except Stopped as e:
        if is_main_process():  # every rank stopped at the same step; rank 0 says so
            print(f"nin: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0


def sweep(args: argparse.Namespace) -> int:
    from nin.runtime import is_main_process
    from nin.training.guards import Stopped
    from nin.training.sweep import sweep as run_sweep

    config, name = config_of(args)
    out = args.out or new_run_path(f"sweep-{name}")
    if out.exists() and any(out.iterdir()):
        raise NinError(f"{out} already exists and is not empty; choose another --out")
    try:
        result = run_sweep(config, args.seeds, out, args.data_dir)
    except Stopped as e:
        print(f"nin: {e}", file=sys.stderr)
        return 128 + e.signum
    if not is_main_process():  # under torchrun, rank 0 alone reports
        return 0
    if "median" in result:
        print(f"test accuracy over {args.seeds} seeds: min {result['min']:.4f}, median {result['median']:.4f}, "
              f"max {result['max']:.4f}")  # fmt: skip
    print(f"failed runs: {result['failed']} of {args.seeds} (diverged, or test accuracy under "
          f"{result['failed_below']:.3g}); {out / 'sweep.json'}")  # fmt: skip
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from nin.inference.evaluate import check_test_limit
    from nin.training.provenance import machine_line

    check_test_limit(args.test_limit)  # a bad flag is reported before the checkpoint is read
    run = load_model(args)
    result = run.evaluate(args.data_dir, args.device, args.test_limit, args.tta, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    tta = " with flip TTA" if result["tta"] else ""
    print(f"{result['checkpoint']}: test accuracy{tta} {result['test_acc']:.4f} on {result['examples']} images "
          f"({result['precision']})")  # fmt: skip
    for session in (result["record"] or {}).get("sessions", []):
        print(f"  trained {session['started']} ({session['status']}): {machine_line(session)}")
    for name, acc in result["per_class_acc"].items():
        print(f"  {name:<12} {acc:.4f}")
    print(f"confusion matrix: {result['confusion_png']}")
    return 0


def predict(args: argparse.Namespace) -> int:
    images = images_of(args)
    onnx = not args.weights and args.checkpoint is not None and args.checkpoint.suffix == ".onnx"
    if onnx:  # an exported model, through onnxruntime
        from nin.inference.evaluate import predict as predict_images
        from nin.inference.export import OnnxModel

        model = OnnxModel(args.checkpoint)
        results = predict_images(model, model.preprocess, model.spec.classes, images)
    else:
        results = load_model(args).predict(images)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 0


def cam(args: argparse.Namespace) -> int:
    result = load_model(args).cam(images_of(args) or None, args.test_samples, args.data_dir, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for r in result["images"]:
        true = f" (true: {r['true']} {r['true_prob']:.3f})" if "true" in r else ""
        print(f"{r['image']}: {r['predicted']} {r['prob']:.3f}{true}")
    print(f"class maps: {result['png']}")
    return 0


def compare(args: argparse.Namespace) -> int:
    from nin.models.registry import MODELS
    from nin.training.compare import compare as run_comparison
    from nin.training.rundir import RunDir

    names = list(MODELS) if args.models == "all" else [n.strip() for n in args.models.split(",") if n.strip()]
    out = args.out or new_run_path("compare")
    if RunDir(out).file("compare_json").exists() and not args.force:
        raise NinError(f"{out} already holds a comparison (compare.json); choose another --out, or pass --force")
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if hasattr(args, f.name)})
    run_comparison(names, recipe, out, args.data_dir)
    print(f"comparison: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return 0


def export(args: argparse.Namespace) -> int:
    path = load_model(args).export(args.out, args.format, args.quantize, args.data_dir)
    kind = {"state-dict": "state_dict", "safetensors": "model directory", "onnx": "ONNX model"}[args.format]
    print(f"{kind}{' (int8)' if args.quantize else ''}: {path}")
    return 0


def report(args: argparse.Namespace) -> int:
    print(f"report: {load_model(args).report(args.data_dir, args.device, args.test_limit, args.out)}")
    return 0


def weights(args: argparse.Namespace) -> int:
    from nin.inference.shipped import card, names, render

    cards = [card(name) for name in ([args.name] if args.name else names())]
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    print("\n\n".join(render(c) for c in cards))
    print("\nuse one with --weights NAME (nin predict, evaluate, cam, report, export, serve) or nin.load_weights(NAME)")
    return 0


def serve(args: argparse.Namespace) -> int:
    from nin.serve.app import allowed_hosts, check_extra, listen, serve_forever

    check_extra()  # before the model loads: the missing extra is the first thing to hear about
    run = load_model(args)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    print(f"serving {args.weights or args.checkpoint} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"nin: note: --host {args.host}: anyone who can reach this port can use it (no authentication)",
              file=sys.stderr)  # fmt: skip
    serve_forever(run, sock, allowed_hosts(args.host, args.allow_host))
    return 0
