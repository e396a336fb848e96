"""Provenance: what made a figure (nin's version and commit, Python, torch, the device, the CPU's features)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from nin.runtime import cpu_info
from nin.version import __version__


def provenance(device: str) -> dict:
    """What made a figure: nin's version and commit, Python, torch, the device and the CPU's features."""
    info = {
        "nin_version": __version__,
        "nin_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        **cpu_info(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _git_commit() -> str | None:
    """The commit of the checkout nin runs from, '+' marking uncommitted changes; None outside a checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode:
        return None
    return commit.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def machine_line(session: dict) -> str:
    """One line: the machine and precision of a session, as docs cite it."""
    machine = session.get("gpu") or session.get("cpu", "?")
    features = [name for name in ("avx2", "avx512_bf16", "amx") if session.get(name)]
    cores = f"{session.get('cpu_count')}-core " if not session.get("gpu") else ""
    return (f"{cores}{machine}" + (f" ({', '.join(features)})" if features and not session.get("gpu") else "")
            + f", {session['precision']}, {session['world_size']} process(es), torch {session['torch']}, "
            f"nin {session['nin_version']} @ {session['nin_commit'] or 'unknown commit'}")  # fmt: skip
