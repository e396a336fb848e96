import os

import pytest

from nin import io


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    io.atomic_write_text(path, "first")
    io.atomic_write_text(path, "second")
    assert path.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]  # no temporary left behind


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    io.atomic_write_text(path, "good\n")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(path, "half-writ")
    assert path.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
