"""CIFAR-10/100 from archives built here in the exact official binary layout (this machine cannot reach
the real ones): parsing, checksum, download, atomic extraction, and training on them."""

import dataclasses
import hashlib
import io
import os
import sys
import tarfile
import threading
import time

import pytest
import torch

import nin
from nin import data
from nin.data import cifar
from nin.data.cifar import ARCHIVES
from nin.data.registry import load_split
from nin.data.subsets import pick
from nin.errors import NinError
from nin.training import step as step_module

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def records(n: int, classes: int, label_bytes: int, seed: int) -> tuple[bytes, torch.Tensor, torch.Tensor]:
    """`n` records: label byte(s), then 1024 red, 1024 green, 1024 blue bytes (32x32, row-major)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, label_bytes), generator=g, dtype=torch.uint8)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    raw = torch.cat([labels, images.reshape(n, -1)], dim=1).numpy().tobytes()
    return raw, labels[:, -1].long(), images


def build_archive(folder, name: str, per_file: int = 8, monkeypatch=None) -> dict:
    """Write `name`'s archive into `folder` with `per_file` records per .bin file; point nin's table at its
    size and MD5 (as the real table points at the real archive's). Returns the expected contents."""
    a = ARCHIVES[name]
    classes = 10 if name == "cifar10" else 100
    names = CIFAR10_NAMES if name == "cifar10" else [f"fine{i}" for i in range(100)]
    expected, buffer = {}, io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:

        def add(file: str, blob: bytes) -> None:
            info = tarfile.TarInfo(f"{a.folder}/{file}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for split, files in a.splits.items():
            parts = [records(per_file, classes, a.label_bytes, seed=i + 10 * (split == "test")) for i in
                     range(len(files))]  # fmt: skip
            for file, (raw, _, _) in zip(files, parts):
                add(file, raw)
            expected[split] = (torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]))
        add(a.names, ("\n".join(names) + "\n\n").encode())  # the official files end in blank lines
        if name == "cifar100":
            add("coarse_label_names.txt", b"coarse0\n")
    blob = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / a.file).write_bytes(blob)
    if monkeypatch:
        monkeypatch.setitem(ARCHIVES, name, dataclasses.replace(a, size=len(blob), md5=hashlib.md5(blob).hexdigest()))
    return {"blob": blob, "names": tuple(names), **expected}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_official_binary_layout_is_parsed(tmp_path, monkeypatch, name):
    expected = build_archive(tmp_path, name, monkeypatch=monkeypatch)
    for split in ("train", "test"):
        got = load_split(name, split, tmp_path)
        labels, images = expected[split]
        assert got.images.shape == (len(labels), 3, 32, 32) and got.images.dtype == torch.uint8
        assert torch.equal(got.images, images) and torch.equal(got.labels, labels)  # CIFAR-100: the fine label
        assert got.classes == expected["names"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARCHIVES[name].file, ARCHIVES[name].folder])


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    expected = build_archive(mirror, "cifar10", monkeypatch=monkeypatch)
    monkeypatch.setenv("NIN_DATA_MIRROR", mirror.as_uri())
    train, test = data.load("cifar10", tmp_path / "cache")
    assert torch.equal(test.images, expected["test"][1]) and len(train) == 40
    assert (tmp_path / "cache" / "cifar-10-binary.tar.gz").read_bytes() == expected["blob"]


def test_without_fcntl_windows_downloads_and_extracts_unlocked(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    expected = build_archive(mirror, "cifar10", monkeypatch=monkeypatch)
    monkeypatch.setenv("NIN_DATA_MIRROR", mirror.as_uri())
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl now raises ImportError, as on Windows
    assert torch.equal(load_split("cifar10", "test", tmp_path / "cache").images, expected["test"][1])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


def test_processes_at_once_download_once(tmp_path, monkeypatch, capsys):
    """Two at once on one folder (torchrun's ranks; threads here, each with its own lock file descriptor as a
    process has): one downloads and extracts, the other waits and reads its files."""
    mirror = tmp_path / "mirror"
    expected = build_archive(mirror, "cifar10", monkeypatch=monkeypatch)
    monkeypatch.setenv("NIN_DATA_MIRROR", mirror.as_uri())
    downloads, real = [], cifar.fetch

    def slow_fetch(*args):
        downloads.append(args[0])
        time.sleep(0.5)  # long enough for the other to arrive while this one downloads
        return real(*args)

    monkeypatch.setattr(cifar, "fetch", slow_fetch)
    start, results = threading.Barrier(2), []

    def load() -> None:
        start.wait()
        results.append(load_split("cifar10", "test", tmp_path / "cache"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(downloads) == 1 and len(results) == 2
    assert all(torch.equal(r.images, expected["test"][1]) for r in results)
    assert "waiting for another process to download and extract cifar-10-binary.tar.gz" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


def test_what_a_killed_extraction_left_is_removed_and_no_live_one_is_touched(tmp_path, monkeypatch):
    """Temporary folders have names of their own: one named by this pid (another machine's, sharing the folder)
    is not this process's to remove while in use; one untouched for an hour (a SIGKILL's) is removed."""
    build_archive(tmp_path, "cifar10", monkeypatch=monkeypatch)
    live, dead = tmp_path / f".cifar-10-batches-bin.{os.getpid()}.partial", tmp_path / ".cifar-10-batches-bin.7.partial"
    dead_file = tmp_path / ".cifar-10-binary.tar.gz.7.1234abcd.tmp"  # a download killed while being saved
    for folder in (live, dead):
        folder.mkdir()
        (folder / "data_batch_1.bin").write_bytes(b"half")
    dead_file.write_bytes(b"half")
    hour_ago = time.time() - 3700
    for path in (dead, dead_file):
        os.utime(path, (hour_ago, hour_ago))
    load_split("cifar10", "train", tmp_path)
    assert not dead.exists() and not dead_file.exists()
    assert (live / "data_batch_1.bin").read_bytes() == b"half"
    os.utime(live, (hour_ago, hour_ago))  # later, once it is stale: the next use removes it
    load_split("cifar10", "test", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


def test_a_foreign_download_is_not_saved(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    build_archive(mirror, "cifar10")  # the real table: size and MD5 of the real archive do not match
    monkeypatch.setenv("NIN_DATA_MIRROR", mirror.as_uri())
    with pytest.raises(NinError, match="not the official cifar-10-binary.tar.gz .*nothing was saved"):
        load_split("cifar10", "train", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_offline_names_the_archive_its_url_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_DATA_MIRROR", "http://127.0.0.1:9/")  # nothing listens on the discard port
    with pytest.raises(NinError) as e:
        load_split("cifar100", "train", tmp_path / "here")
    message = str(e.value)
    assert "cifar-100-binary.tar.gz" in message and "http://127.0.0.1:9/cifar-100-binary.tar.gz" in message
    assert str(tmp_path / "here") in message


def test_a_truncated_or_foreign_archive_leaves_nothing_half_extracted(tmp_path, monkeypatch):
    expected = build_archive(tmp_path, "cifar10", monkeypatch=monkeypatch)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(expected["blob"][: len(expected["blob"]) // 2])
    with pytest.raises(NinError, match="not the official cifar-10-binary.tar.gz"):  # size and MD5 differ
        load_split("cifar10", "train", tmp_path)
    truncated = archive.read_bytes()  # now as if the table said so: extraction itself meets the end
    monkeypatch.setitem(ARCHIVES, "cifar10", dataclasses.replace(ARCHIVES["cifar10"], size=len(truncated),
                                                                 md5=hashlib.md5(truncated).hexdigest()))  # fmt: skip
    with pytest.raises(NinError, match="not a complete cifar10 binary archive.*Nothing was extracted"):
        load_split("cifar10", "train", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-binary.tar.gz"]  # no folder, no .partial
    buffer = io.BytesIO()  # a valid tar.gz of something else
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"12345"))
    archive.write_bytes(buffer.getvalue())
    foreign = buffer.getvalue()
    monkeypatch.setitem(ARCHIVES, "cifar10", dataclasses.replace(ARCHIVES["cifar10"], size=len(foreign),
                                                                 md5=hashlib.md5(foreign).hexdigest()))  # fmt: skip
    with pytest.raises(NinError, match="5 bytes is not a whole number of cifar10 records of 3073 bytes"):
        load_split("cifar10", "train", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-binary.tar.gz"]


def test_a_divergence_on_cifar100_names_its_chance_level(tmp_path, monkeypatch):
    """The chance level of 100 classes is ln(100) = 4.61, not Fashion-MNIST's ln(10) = 2.30."""
    build_archive(tmp_path / "cifar", "cifar100", monkeypatch=monkeypatch)
    real = step_module.F.cross_entropy
    monkeypatch.setattr(step_module.F, "cross_entropy", lambda *a, **k: real(*a, **k) * 50)
    with pytest.raises(NinError, match=r"loss jumped to \d+\.\d \(chance level is ln\(100\) = 4\.61\) at epoch 1"):
        nin.train("fast", out=tmp_path / "run", data_dir=tmp_path / "cifar", dataset="cifar100", resize=32, width=4,
                  epochs=1, device="cpu", precision="fp32")  # fmt: skip


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_training_and_every_command_after_it_on_cifar(tmp_path, monkeypatch):
    build_archive(tmp_path / "cifar", "cifar100", per_file=64, monkeypatch=monkeypatch)
    run = nin.train("fast", out=tmp_path / "run", data_dir=tmp_path / "cifar", dataset="cifar100", resize=32,
                    width=4, epochs=1, normalize=True, augment="flip-crop", device="cpu", precision="fp32")  # fmt: skip
    assert run.spec.channels == 3 and len(run.classes) == 100 and run.classes[7] == "fine7"
    assert run.model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    images = load_split("cifar100", "train", tmp_path / "cifar").images
    mean = images.double().div(255).mean(dim=(0, 2, 3)).float()
    torch.testing.assert_close(run.model[0].mean.flatten(), mean)  # the training set's, kept with the weights
    result = run.evaluate(data_dir=tmp_path / "cifar")
    tested = len(load_split("cifar100", "test", tmp_path / "cifar").labels.unique())  # classes with test images
    assert result["examples"] == 64 and result["test_acc"] == run.test_acc and len(result["per_class_acc"]) == tested
    (prediction,) = run.predict(images[:1], top=3)
    assert len(prediction["top"]) == 3 and prediction["top"][0]["class"].startswith("fine")
    rows = run.cam(test_samples=3, data_dir=tmp_path / "cifar")["images"]  # colour class maps, 4x4 at 32
    labels = load_split("cifar100", "test", tmp_path / "cifar").labels
    assert [r["true"] for r in rows] == [run.classes[i] for i in labels[pick(labels, 3)]]  # every class drawn
    assert "cifar100 test images" in run.report(data_dir=tmp_path / "cifar").read_text()
