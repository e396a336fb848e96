"""Image folders in torchvision's ImageFolder layout, and streaming them (`--stream`): the same order, shards
and pixels whoever decodes them, nothing held but file names."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nin.cli import main
from nin.config import Config
from nin.data import folder as folder_module
from nin.data.images import open_image
from nin.data.preprocess import center_box, prepare, to_inputs
from nin.data.registry import load_split, shape_of
from nin.data.stream import RATIO, SCALE, StreamBatches, _Decode, crop_box, train_draft, transform, usable_cores
from nin.data.subsets import splits
from nin.errors import NinError

CPU = torch.device("cpu")


def photos(root, classes=("cat", "dog", "fox"), per_class: int = 4, split: str = "train", suffix: str = ".JPEG"):
    """`per_class` small random-colour images per class, half of them one folder down (nested)."""
    rng = np.random.default_rng(len(split))
    for c in classes:
        for i in range(per_class):
            path = root / split / c / ("deep" if i % 2 else "") / f"{i}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            w, h = rng.integers(20, 48, size=2)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return root


def test_imagefolder_layout_nested_upper_case_jpeg_and_sorted_classes(tmp_path):
    root = photos(tmp_path, classes=("zebra", "ant", "Moth"))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / ".hidden").mkdir()
    Image.new("RGB", (9, 9)).save(root / "train" / "ant" / ".hidden" / "x.jpg")
    data = load_split("folder", "train", root, image_size=8)
    assert data.classes == ("Moth", "ant", "zebra")  # sorted(os.listdir), as ImageFolder.class_to_idx
    assert len(data) == 12 and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # nested ones too


def test_val_is_the_held_out_split_unless_there_is_a_test_folder(tmp_path, capsys):
    root = photos(photos(tmp_path), split="val", per_class=2)
    assert len(load_split("folder", "test", root, image_size=8)) == 6  # val/ (ImageNet's layout)
    photos(root, split="test", per_class=1)
    assert len(load_split("folder", "test", root, image_size=8)) == 3  # test/ wins, and a line says so
    assert "has test/ and val/: testing on test/ (val/ is not read)" in capsys.readouterr().out


def test_a_bad_image_does_not_stop_summary_or_sweep(tmp_path):
    root = photos(tmp_path)
    (root / "train" / "ant").mkdir()
    (root / "train" / "ant" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert shape_of("folder", root) == (3, 4)  # channels read from the other headers


def test_decoding_threads_are_the_cores_this_process_may_use(tmp_path, monkeypatch):
    root = photos(tmp_path)
    monkeypatch.setattr(folder_module.os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(folder_module.os, "cpu_count", lambda: 64)
    used = []
    real = folder_module.ThreadPoolExecutor
    monkeypatch.setattr(folder_module, "ThreadPoolExecutor", lambda n: used.append(n) or real(n))
    load_split("folder", "train", root, image_size=8)
    assert used == [1]


def test_folders_load_where_the_os_has_no_affinity(tmp_path, monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: the CPU count decides the threads and the workers."""
    root = photos(tmp_path)
    monkeypatch.delattr(folder_module.os, "sched_getaffinity")
    monkeypatch.setattr(folder_module.os, "cpu_count", lambda: 3)
    used = []
    real = folder_module.ThreadPoolExecutor
    monkeypatch.setattr(folder_module, "ThreadPoolExecutor", lambda n: used.append(n) or real(n))
    assert len(load_split("folder", "train", root, image_size=8)) == 12 and used == [3]
    assert usable_cores() == 3


def test_crop_boxes_follow_random_resized_crop_and_the_centre_crop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = crop_box(300, 200, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 300 and 0 <= top and bottom <= 200
        assert SCALE[0] * 0.9 <= w * h / 60_000 <= 1 and RATIO[0] * 0.9 <= w / h <= RATIO[1] * 1.1
    assert center_box(300, 200, 224) == pytest.approx((62.5, 12.5, 237.5, 187.5))  # 175 = 200 * 224 / 256


def test_streamed_batches_are_the_images_through_their_own_rules(tmp_path):
    root = photos(tmp_path)
    files = folder_module.stream_folder(root, "train", 16)
    train = StreamBatches(files, 5, CPU, train=True, seed=7)
    (x, y), *_ = train.epoch(2)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(7 * 100_003 + 2))[:5]
    for k, i in enumerate(order.tolist()):
        img = open_image(root / files.names[i].decode(), draft=train_draft(16))
        expected = transform(img, 3, 16, np.random.default_rng((7, 2, i))).float() / 255
        assert torch.equal(x[k], expected) and y[k] == files.labels[i]
    (x, _), *_ = StreamBatches(files, 12, CPU).epoch(0)  # testing: in order, centre crops, no randomness
    assert torch.equal(x[3], to_inputs(prepare(root / files.names[3].decode(), 3, 16, "center")[None], 16)[0])
    assert x.shape == (12, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)


def test_workers_resume_and_ranks_change_nothing(tmp_path):
    """Worker processes decode the same pixels as this process; an epoch started at batch 2 is the rest
    of the whole epoch; rank r of 2 gets its half of every global batch (DistributedSampler semantics)."""
    files = folder_module.stream_folder(photos(tmp_path), "train", 12)
    whole = list(StreamBatches(files, 4, CPU, train=True, seed=1).epoch(3))
    assert len(whole) == 3 and [len(y) for _, y in whole] == [4, 4, 4]
    workers = list(StreamBatches(files, 4, CPU, train=True, seed=1, workers=2).epoch(3))
    resumed = list(StreamBatches(files, 4, CPU, train=True, seed=1).epoch(3, start=2))
    ranks = [list(StreamBatches(files, 4, CPU, train=True, seed=1, rank=r, world_size=2).epoch(3)) for r in (0, 1)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(workers[step][0], x) and torch.equal(workers[step][1], y)
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), y)
    assert len(resumed) == 1 and torch.equal(resumed[0][0], whole[2][0])
    assert not torch.equal(whole[0][0], next(StreamBatches(files, 4, CPU, train=True, seed=1).epoch(4))[0])


def test_workers_hold_file_names_not_images(tmp_path):
    """What each worker process gets (the pickled `_Decode`): the names, labels and settings, a few dozen
    bytes per image whatever the images' size, and streaming writes no decoded cache."""
    config = Config(dataset="folder", stream=True, resize=32)
    small, big = (photos(photos(tmp_path / d, per_class=n), split="val", per_class=1) for d, n in (("s", 4), ("b", 40)))
    train, more = splits(config, small)[0], splits(config, big)[0]
    sent = len(pickle.dumps(_Decode(train, train=True)))
    assert train.size == 32 and sent < 2_000 + 64 * len(train)
    assert len(pickle.dumps(_Decode(more, train=True))) - sent < 64 * (len(more) - len(train))
    assert not list(Path(os.environ["XDG_CACHE_HOME"]).glob("**/*.pt"))


def test_over_the_memory_budget_the_folder_is_streamed(tmp_path, capsys):
    root = photos(photos(tmp_path), split="val", per_class=1)
    train, val, test = splits(Config(dataset="folder", image_size=32, memory_budget=1e-9), root)
    assert type(train).__name__ == "Files" and len(test) == 3 and val is None
    assert "over --memory-budget 1e-09 GB" in capsys.readouterr().out
    train, _, _ = splits(Config(dataset="folder", image_size=32), root)
    assert type(train).__name__ == "Dataset"
    with pytest.raises(NinError, match="stream reads image folders"):
        Config(stream=True)


@pytest.mark.parametrize("skip", [False, True])
def test_a_bad_image_in_a_stream_is_named_or_skipped(tmp_path, skip, capsys):
    root = photos(tmp_path)
    bad = root / "train" / "cat" / "0.JPEG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    files = folder_module.stream_folder(root, "train", 8)
    batches = StreamBatches(files, 12, CPU, skip_bad=skip)
    if not skip:
        with pytest.raises(NinError, match=r"cat/0.JPEG: .*--skip-bad-images"):
            list(batches)
        return
    ((x, y),) = list(batches)
    assert len(y) == 11 and "cat/0.JPEG" in capsys.readouterr().out


@pytest.mark.slow
def test_a_streaming_run_killed_and_resumed_is_bit_identical(tmp_path):
    """SIGKILL mid-epoch (after a checkpoint), --resume: the same weights and metrics as the uninterrupted run.
    36 photos at 32 px, nin-bn width 8, 6 steps per epoch, 2 workers, a checkpoint every step."""
    root = photos(photos(tmp_path / "photos", per_class=12), split="val", per_class=2)
    run = ["train", "--dataset", "folder", "--data-dir", str(root), "--stream", "--workers", "2", "--arch", "nin-bn",
           "--width", "8", "--resize", "32", "--epochs", "2", "--batch-size", "6", "--dropout", "0.3", "--normalize",
           "--device", "cpu", "--precision", "fp32", "--checkpoint-every", "1"]  # fmt: skip
    start = lambda out: subprocess.Popen([sys.executable, "-m", "nin", *run, "--out", str(out)],  # noqa: E731
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    reference = start(tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.communicate()
    killed = start(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not (checkpoint.exists() and torch.load(checkpoint, weights_only=True)["position"]["step"] >= 2):
        assert killed.poll() is None and time.time() < deadline, killed.communicate()
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    ours, theirs = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("killed", "reference"))
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    strip = lambda r: [{k: v for k, v in m.items() if "sec" not in k} for m in r["metrics"]]  # noqa: E731
    assert strip(ours) == strip(theirs) and len(ours["metrics"]) == 2


def test_file_names_that_are_not_utf8_are_read(tmp_path, capsys):
    """A name the file system holds as raw bytes (Latin-1 `café`): Python sees it with a surrogate escape,
    which does not encode to UTF-8; the stream keeps the file system's own bytes."""
    root = photos(tmp_path)
    cat = os.fsencode(root / "train" / "cat")
    Image.new("RGB", (20, 20), (200, 10, 10)).save(os.fsdecode(cat + b"/caf\xe9.png"))
    open(cat + b"/\xe9t\xe9.png", "wb").write(b"\x89PNG\r\n\x1a\n truncated")  # a bad one, skipped by name
    files = folder_module.stream_folder(root, "train", 8)
    assert b"caf\xe9.png" in [os.path.basename(n) for n in files.names]
    ((x, y),) = list(StreamBatches(files, 14, CPU, skip_bad=True))
    assert len(y) == 13 and "cat/\\xe9t\\xe9.png: " in capsys.readouterr().out  # named as printable text
    assert len(load_split("folder", "train", root, image_size=8, skip_bad_images=True)) == 13  # in memory too


def test_decoder_workers_per_rank_share_the_cores_among_the_local_ranks(monkeypatch):
    """Under torchrun each rank starts its own decoder workers: the cores this process may use, divided by
    the ranks on this machine (LOCAL_WORLD_SIZE), at least one each."""
    from nin.data import stream

    monkeypatch.setattr(stream.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert stream.default_workers() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert stream.default_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert stream.default_workers() == 1
