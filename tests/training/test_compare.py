"""`nin compare`: one budget for every model, the d2l NiN exercises, and its three output files."""

import json
import shutil

import pytest
import torch
from PIL import Image
from torch import nn

from helpers import check_page
from nin.cli import main
from nin.config import Recipe
from nin.models.classic import lenet
from nin.models.nin import NiN, nin_fc_head
from nin.training import compare as compare_module
from nin.training.compare import compare, head_params

SEED_PARAMS = 1_992_166


def params(net):
    return sum(p.numel() for p in net.parameters())


def test_exercise_variants_change_only_what_they_say():
    # one 1x1 conv fewer per block: 96*96+96 + 256*256+256 + 384*384+384 + 10*10+10 parameters fewer
    assert params(NiN(mlp_layers=1)) == SEED_PARAMS - 223_054
    assert params(NiN(mlp_layers=3)) == SEED_PARAMS + 223_054
    wide = NiN(mlp_kernel=3)  # 3x3 instead of 1x1: 9x the weights of those convs, same shapes
    assert params(wide) == SEED_PARAMS + 8 * (96 * 96 + 256 * 256 + 384 * 384 + 10 * 10) * 2
    for net in (NiN(mlp_layers=1), NiN(mlp_layers=3), wide, nin_fc_head(224)):
        assert net(torch.zeros(2, 1, 224, 224)).shape == (2, 10)
    fc = nin_fc_head(224)  # the 10 class maps of 5x5 go to a dense layer instead of being averaged
    assert fc[-1].in_features == 250 and params(fc) == SEED_PARAMS + 250 * 10 + 10


def test_head_share_counts_what_follows_the_last_pooling():
    assert head_params(NiN()) == (384 * 9 * 10 + 10) + 2 * (10 * 10 + 10)  # the class-map block only
    assert head_params(lenet()) == (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert head_params(nin_fc_head(99)) == head_params(NiN()) + 40 * 10 + 10  # 10 maps of 2x2 at 99


def tiny(resize, channels=1, classes=10):
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 14 * 14, 10))  # fmt: skip


@pytest.fixture
def with_tiny(monkeypatch):
    monkeypatch.setitem(compare_module.MODELS, "tiny", ("a tiny CNN", tiny))


def test_every_model_gets_the_budget_and_learns(with_tiny, tmp_path):
    seen = []
    real_fit = compare_module.fit

    def counting_fit(net, batches, recipe, rt, classes=10):
        hook = net.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])) if m.training else None)
        try:
            return real_fit(net, batches, recipe, rt, classes)
        finally:
            hook.remove()

    compare_module.fit = counting_fit
    try:
        rows = compare(["tiny"], Recipe(budget=6000, resize=28, lr=0.05, test_limit=1000), tmp_path)
    finally:
        compare_module.fit = real_fit
    assert sum(seen) == 6000 and seen[-1] == 6000 - 46 * 128  # the last batch is cut to the budget
    (row,) = rows
    assert row["status"] == "ok" and row["test_acc"] > 0.5  # chance is 0.1
    assert row["params"] == params(tiny(28)) and row["macs"] == 28 * 28 * 8 * 9 + 8 * 14 * 14 * 10
    assert row["head_share"] == (8 * 14 * 14 * 10 + 10) / row["params"]
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == rows and saved["recipe"]["budget"] == 6000
    table = (tmp_path / "compare.md").read_text().splitlines()
    assert table[0].startswith("6,000 training images of fashion-mnist per model at 28x28")
    assert table[-1].startswith("| a tiny CNN |")
    with Image.open(tmp_path / "compare.png") as png:
        assert png.format == "PNG"


def test_a_diverging_model_is_reported_and_the_others_still_run(with_tiny, tmp_path):
    rows = compare(["tiny", "tiny"], Recipe(budget=512, resize=28, lr=1e9, test_limit=100), tmp_path)
    assert [r["status"] for r in rows] == ["diverged", "diverged"]
    assert "(diverged)" in (tmp_path / "compare.md").read_text()


def test_cli_real_models_then_report_shows_the_comparison(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    args = ["compare", "--models", "lenet,nin-fc", "--budget", "128", "--resize", "67", "--test-limit", "100"]
    assert main([*args, "--out", str(run)]) == 0
    assert [r["model"] for r in json.loads((run / "compare.json").read_text())["rows"]] == ["lenet", "nin-fc"]
    before = (run / "compare.json").read_bytes()
    assert main([*args, "--out", str(run)]) == 2  # never overwrites an earlier comparison unasked
    assert "already holds a comparison" in capsys.readouterr().err
    assert (run / "compare.json").read_bytes() == before

    out = tmp_path / "report.html"
    assert main(["report", str(run), "--test-limit", "100", "--out", str(out)]) == 0
    checker = check_page(out)
    assert [img["alt"] for img in checker.images][-1] == "comparison bar charts"
    assert "NiN, a dense layer instead of GAP" in out.read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "lenet,resnet"], "unknown model(s) resnet; choose from lenet, alexnet"),
        (["--models", "alexnet", "--resize", "60"], "--resize 60 is too small for alexnet; it needs at least 65"),
        (["--budget", "0"], "budget must be at least 1, got 0"),
        (["--batch-size", "-1"], "batch_size must be at least 1"),
        (["--lr", "-1"], "lr must be positive"),
        (["--test-limit", "-5"], "test_limit must be 0 (off/all) or positive"),
        (["--resize", "5000"], "resize 5000 is larger than 1024"),
    ],
)
def test_bad_arguments_get_one_clear_error(args, message, tmp_path, capsys):
    assert main(["compare", *args, "--out", str(tmp_path / "c")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
