"""Runtime: bf16 autocast only where the hardware has it (and close to fp32 on real images); glibc tuning."""

import platform

import pytest
import torch

from helpers import SHORT
from nin.api import load
from nin.cli import keep_freed_memory
from nin.config import Config
from nin.data.preprocess import to_inputs
from nin.data.registry import load_fashion_mnist
from nin.errors import NinError
from nin.runtime import autocast_dtype
from nin.training.loop import train
from nin.training.rundir import RunDir

CPU = torch.device("cpu")
NATIVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_precision_choice():
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "auto") == (torch.bfloat16 if NATIVE_BF16 else None)
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16
    assert autocast_dtype(torch.device("mps"), "auto") is None
    with pytest.raises(NinError, match="bf16 runs on cpu or cuda"):
        autocast_dtype(torch.device("mps"), "bf16")


@pytest.mark.parametrize("native", [False, True])
def test_auto_picks_bf16_only_where_native_and_warns_where_emulated(monkeypatch, capsys, native: bool):
    """Both kinds of CPU, whichever this one is: `auto` is bf16 only with native bf16 (AVX-512 BF16/AMX);
    an explicit bf16 on a CPU without it trains, with a warning that it is slow."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert autocast_dtype(CPU, "auto") == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16
    assert ("emulated and slow" in capsys.readouterr().err) == (not native)


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_bf16_channels_last_agrees_with_fp32_nchw_on_real_images(trained_run):
    """The trained network on 500 real test images: fp32 NCHW (the seed's path) vs bf16 autocast with
    channels_last (ours where bf16 is native). bf16 keeps 8 bits of mantissa (relative error ~0.4% per
    rounding), so logits may differ by a few percent of their range; predictions must agree on >= 98%."""
    run = load(trained_run)
    net, config = run.model, run.config
    images, _ = load_fashion_mnist("test")
    x = to_inputs(images[:500], config.resize)
    with torch.inference_mode():
        reference = net(x)
        fast_net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_net(x.contiguous(memory_format=torch.channels_last)).float()
    scale = reference.abs().max()
    assert (fast - reference).abs().max() <= 0.05 * scale
    assert (fast.argmax(1) == reference.argmax(1)).float().mean() >= 0.98


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_training_in_bf16_runs_and_says_so(tmp_path, capsys):
    config = Config(**{**SHORT, "precision": "bf16", "epochs": 1, "batch_size": 32, "train_limit": 64,
                       "test_limit": 64})  # fmt: skip
    (metrics,) = train(config, tmp_path)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert "bf16 autocast" in capsys.readouterr().out
    (session,) = RunDir(tmp_path).record()["sessions"]
    assert session["precision"] == "bf16"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_kept_on_glibc():
    # glibc accepts both settings (mallopt returns 0 for a value it refuses, e.g. over its 32 MB cap)
    assert keep_freed_memory() is True
