"""`nin report`: one valid, self-contained HTML page per run."""

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from nin.cli import main
from nin.report import report

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(HTMLParser):
    """Balanced tags, and no resource that is not embedded in the page."""

    def __init__(self):
        super().__init__()
        self.open, self.images, self.errors, self.doctype = [], [], [], False

    def handle_decl(self, decl):
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "link", "iframe") or any(k in attrs for k in ("href", "srcset")):
            self.errors.append(f"external reference possible: <{tag} {attrs}>")
        if tag == "img":
            self.images.append(attrs)
        elif tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def check_page(path) -> Checker:
    checker = Checker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert checker.doctype and not checker.open and not checker.errors, (checker.open, checker.errors)
    for img in checker.images:
        assert img["alt"] and img["src"].startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as png:
            assert png.format == "PNG"
    return checker


def test_report_of_a_run_with_class_maps(run_at_131):
    page = report(run_at_131, test_limit=200)
    assert page == run_at_131 / "report.html"
    checker = check_page(page)
    alts = [img["alt"] for img in checker.images]
    assert alts == ["training curves", "confusion matrix", "class activation maps"]
    text = page.read_text()
    for expected in ("Config", "kaiming", "Training", "Test set", "Ankle boot", "correct and"):
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
