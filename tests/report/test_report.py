"""`nin report`: one valid, self-contained HTML page per run."""

import shutil

import pytest

from helpers import check_page
from nin.api import load
from nin.cli import main


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_report_of_a_run_with_class_maps(run_at_131, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_at_131, run)
    page = load(run).report(test_limit=200)
    assert page == run / "report.html"
    checker = check_page(page)
    alts = [img["alt"] for img in checker.images]
    assert alts == ["training curves", "confusion matrix", "class activation maps"]
    text = page.read_text()
    for expected in ("How it was made", "finished", "fp32, 1 process(es)", "Config", "kaiming", "Training",
                     "Test set", "Ankle boot", "correct and"):  # fmt: skip
        assert expected in text


def test_report_of_a_run_at_67_says_why_there_are_no_maps(trained_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(trained_run), "--test-limit", "100", "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    checker = check_page(out)
    assert [img["alt"] for img in checker.images] == ["training curves", "confusion matrix"]
    assert "class maps are 1x1" in out.read_text()
    assert not (trained_run / "confusion_matrix.png").exists()  # nothing written beside the run but the page
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
