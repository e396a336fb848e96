import gzip
import hashlib
import http.server
import os
import shutil
import threading
from functools import partial

import pytest
import torch
from PIL import Image

from nin import data
from nin.data import download, registry
from nin.data.batches import Batches, augment, random_erase
from nin.data.idx import IDX
from nin.data.preprocess import to_inputs
from nin.data.registry import load_fashion_mnist
from nin.data.subsets import split
from nin.data.types import CLASS_NAMES, Dataset
from nin.errors import NinError

FILES = IDX["fashion-mnist"].sha256


def test_bundled_data_is_the_real_fashion_mnist():
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10000, 28, 28) and test_y.dtype == torch.int64
    # facts from the dataset's README
    assert train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test_y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(train_y).tolist() == [6000] * 10
    assert round(train_x.float().div(255).mean().item(), 4) == 0.2860
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


def test_data_dir_and_environment_variable(data_copy, monkeypatch):
    x, _ = load_fashion_mnist("test", data_copy)
    assert x.shape == (10000, 28, 28)
    monkeypatch.setenv("NIN_DATA_DIR", str(data_copy.parent))  # the root: one folder per dataset in it
    assert data.default_data_dir() == data_copy and data.default_data_dir("mnist") == data_copy.parent / "mnist"


def test_checksum_is_cached_and_rechecked_when_the_file_changes(data_copy, monkeypatch):
    calls = []
    real = download.sha256
    monkeypatch.setattr(download, "sha256", lambda blob: calls.append(len(blob)) or real(blob))
    load_fashion_mnist("test", data_copy)
    assert sorted(calls) == [10008, 7840016]  # both test files' decompressed content hashed
    load_fashion_mnist("test", data_copy)
    assert len(calls) == 2  # cached: not hashed again
    os.utime(data_copy / "t10k-labels-idx1-ubyte.gz", ns=(0, 0))
    load_fashion_mnist("test", data_copy)
    assert calls[2:] == [10008]  # a touched file is verified again


def _rewrite(path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable gzip file"),
        (lambda p: p.write_bytes(b"this is not gzip"), "not a readable gzip file"),
        (lambda p: _rewrite(p, b"\x00\x00\x08\x03" + gzip.decompress(p.read_bytes())[4:]), "magic number"),
        (lambda p: _rewrite(p, gzip.decompress(p.read_bytes())[:-28]), "wrong size"),
        (lambda p: _rewrite(p, b"\x00\x00\x08\x01\x00"), "wrong size"),
        (lambda p: _rewrite(p, gzip.decompress(p.read_bytes())[:-1] + b"\x07"), "checksum mismatch"),
    ],
    ids=["truncated", "not-gzip", "wrong-magic", "wrong-size", "short-header", "checksum"],
)
def test_damaged_file_gives_one_clear_error(data_copy, damage, message):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    damage(path)
    with pytest.raises(NinError, match=message) as e:
        load_fashion_mnist("test", data_copy)
    assert str(path) in str(e.value) and "--data-dir" in str(e.value)


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on localhost serving a folder, like the official mirror."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_missing_files_are_downloaded_and_verified(data_copy, tmp_path, mirror, monkeypatch):
    root, url = mirror
    for name in FILES:
        shutil.copy(data_copy / name, root / name)
    monkeypatch.setenv("NIN_DATA_MIRROR", url)
    target = tmp_path / "empty"
    x, y = load_fashion_mnist("test", target)
    assert x.shape == (10000, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_a_corrupted_download_is_not_saved(data_copy, tmp_path, mirror, monkeypatch):
    root, url = mirror
    shutil.copy(data_copy / "t10k-images-idx3-ubyte.gz", root)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupted")
    monkeypatch.setenv("NIN_DATA_MIRROR", url)
    target = tmp_path / "empty"
    with pytest.raises(NinError, match="nothing was saved"):
        load_fashion_mnist("test", target)
    assert not any(p.name.startswith("t10k-labels") for p in target.iterdir())


def test_offline_gives_one_message_that_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_DATA_MIRROR", "http://127.0.0.1:9/")  # discard port: nothing listens
    with pytest.raises(NinError, match="could not be downloaded") as e:
        load_fashion_mnist("train", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "train-images-idx3-ubyte.gz" in str(e.value)


@pytest.mark.parametrize("size", [67, 96, 224, 14])
def test_resize_matches_pil_bilinear_then_to_tensor(size):
    """d2l: transforms.Resize(size) on the PIL image (bilinear), then ToTensor(): within 1/255 of PIL."""
    images, _ = load_fashion_mnist("test")
    images = images[:32]
    ours = to_inputs(images, size)
    assert ours.shape == (32, 1, size, size) and ours.dtype == torch.float32
    pil = (
        torch.stack(
            [
                torch.frombuffer(
                    bytearray(Image.fromarray(img.numpy()).resize((size, size), Image.Resampling.BILINEAR).tobytes()),
                    dtype=torch.uint8,
                ).reshape(1, size, size)
                for img in images
            ]
        ).float()
        / 255
    )
    assert (ours - pil).abs().max().item() <= 1 / 255 + 1e-6
    assert (ours - pil).abs().mean().item() < 0.002  # almost all pixels identical


def test_batches_shuffle_per_epoch_and_keep_the_last_partial_batch():
    x = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1).expand(10, 28, 28).contiguous()
    y = torch.arange(10)
    loader = Batches(x, y, batch_size=4, size=28, device=torch.device("cpu"), shuffle=True, seed=1)
    assert len(loader) == 3
    first = [b[1].tolist() for b in loader.epoch(0)]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert [b[1].tolist() for b in loader.epoch(0)] == first  # same epoch, same order
    assert [b[1].tolist() for b in loader.epoch(0, start=1)] == first[1:]  # resuming mid-epoch
    assert [b[1].tolist() for b in loader.epoch(1)] != first
    for images, labels in loader.epoch(1):  # each image still travels with its label
        assert torch.equal(images[:, 0, 0, 0], labels.float() / 255)


def test_ranks_split_each_global_batch():
    x, y = torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10)
    kwargs = dict(batch_size=4, size=28, device=torch.device("cpu"), shuffle=True, seed=3)
    single = [b[1].tolist() for b in Batches(x, y, **kwargs).epoch(2)]
    ranks = [[b[1].tolist() for b in Batches(x, y, **kwargs, rank=r, world_size=2).epoch(2)] for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == single  # rank 0's part, then rank 1's, of the same batch
    assert [len(b) for b in ranks[0]] == [2, 2, 1]
    loader = Batches(x, y, **kwargs, world_size=2)
    assert [loader.global_batch_len(i) for i in range(3)] == [4, 4, 2]


def test_unshuffled_batches_are_in_order():
    x, y = torch.zeros(5, 28, 28, dtype=torch.uint8), torch.arange(5)
    loader = Batches(x, y, batch_size=2, size=67, device=torch.device("cpu"))
    assert [b[1].tolist() for b in loader] == [[0, 1], [2, 3], [4]]
    assert next(iter(loader))[0].shape == (2, 1, 67, 67)


def test_files_table_matches_the_bundled_copies():
    for name, idx in IDX.items():
        for file, sha in idx.sha256.items():
            assert hashlib.sha256(gzip.decompress((registry.REPO_DATA / name / file).read_bytes())).hexdigest() == sha


def test_validation_split_is_fixed_disjoint_and_complete():
    whole = Dataset(torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1), torch.arange(100), ("a",))
    train, val = split(whole, 20)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(100))
    assert torch.equal(train.images.flatten().long(), train.labels)  # images stay with their labels
    assert torch.equal(split(whole, 20)[1].labels, val.labels)  # the same images every time
    assert val.labels.tolist() != list(range(20))  # drawn at random, not the first ones
    with pytest.raises(NinError, match="the training set has 100 images"):
        split(whole, 100)


def test_augment_flips_and_shifts_each_image_on_its_own():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    assert augment(x, "none") is x
    flipped = augment(x, "flip")
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54
    shifted = augment(x, "flip-crop")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for out, pad in zip(shifted, padded):
        found = [(dy, dx, f) for f in (False, True) for dy in range(5) for dx in range(5)
                 if torch.equal(out[0], (pad.flip(2) if f else pad)[0, dy : dy + 28, dx : dx + 28])]  # fmt: skip
        assert found, "not a flip plus a shift of at most 2 pixels"
        shifts.add(found[0][:2])
    assert len(shifts) > 10  # shifts differ from image to image


def test_random_erasing_replaces_one_rectangle_in_about_half_of_the_images():
    torch.manual_seed(0)
    x = torch.full((2000, 1, 28, 28), -1.0)  # noise is in [0, 1): every erased pixel shows
    erased = random_erase(x) >= 0
    hit = erased.flatten(1).any(dim=1)
    assert 900 < hit.sum() < 1100  # p = 1/2
    shares = []
    for mask in erased[hit, 0]:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        # one filled, axis-aligned rectangle
        assert mask.sum() == len(rows) * len(cols)
        assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        shares.append(mask.float().mean().item())
    assert 0.01 < min(shares) < 0.05 and 0.35 < max(shares) <= 0.45  # area 2% to 40% (rounded, clipped)
    y = augment(torch.rand(64, 1, 28, 28), "flip-crop-erase")
    assert y.shape == (64, 1, 28, 28) and y.is_contiguous(memory_format=torch.channels_last)


def test_bundled_mnist_is_the_real_mnist():
    train, test = data.load("mnist")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    # facts from data/mnist/README.md: label counts, first labels, pixel mean and std
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train.labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert test.labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    mean, std = data.mean_std(train.images)
    assert (round(mean.item(), 4), round(std.item(), 4)) == (0.1307, 0.3081)
    assert test.classes == tuple("0123456789")


def test_the_official_mnist_gz_passes_too(tmp_path):
    """The checksums are of the decompressed IDX content: another gzip of the same bytes (LeCun's own .gz
    files have other headers than the bundled ones) passes; other content does not."""
    for file in IDX["mnist"].sha256:
        raw = gzip.decompress((registry.REPO_DATA / "mnist" / file).read_bytes())
        (tmp_path / file).write_bytes(gzip.compress(raw, compresslevel=1, mtime=1))
    assert len(data.load_split("mnist", "test", tmp_path)) == 10000
    fashion = registry.REPO_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(fashion, tmp_path / "t10k-labels-idx1-ubyte.gz")  # the right format, the wrong dataset
    with pytest.raises(NinError, match="checksum mismatch.*official mnist file"):
        data.load_split("mnist", "test", tmp_path)


def test_unknown_dataset_and_folder_without_a_data_dir():
    with pytest.raises(NinError, match="unknown dataset 'svhn'; choose from fashion-mnist, mnist"):
        data.load("svhn")
    with pytest.raises(NinError, match="--dataset folder needs --data-dir DIR"):
        data.load("folder")


def test_mean_std_is_per_channel():
    x = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 255.0)]).to(torch.uint8).expand(3, 2, 4, 4)
    mean, std = data.mean_std(x.contiguous())
    assert mean.tolist() == [0.0, 1.0] and std.max() < 1e-5


def test_crop_augment_shifts_without_flipping_and_keeps_channels():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 28, 28)
    out = augment(x, "crop")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for o, p in zip(out, padded):
        assert any(torch.equal(o, p[:, dy : dy + 28, dx : dx + 28]) for dy in range(5) for dx in range(5))
