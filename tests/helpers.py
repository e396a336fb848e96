"""What several test modules share: the short real-data run they train once (the `trained_run` fixture)
and vary, the checker of a self-contained HTML page, and the guard of tests that need an optional extra."""

import base64
import importlib
import io
import os
import shutil
import signal
from html.parser import HTMLParser
from types import ModuleType
from typing import NoReturn

import pytest
from PIL import Image

# The seed's network at the smallest input it accepts, on 4,096 training images. NiN without
# BatchNorm is slow and erratic to leave its starting plateau; this setting (small lr with momentum,
# no dropout) learned in each of seeds 0, 1 and 2 (test accuracy 0.30, 0.45, 0.40 after 2 epochs).
SHORT = dict(resize=67, epochs=2, batch_size=64, lr=0.005, momentum=0.9, dropout=0.0, init="kaiming",
             train_limit=2048, test_limit=1000, device="cpu", precision="fp32")  # fmt: skip


def unavailable(what: str, variable: str = "NIN_REQUIRE_EXTRAS") -> NoReturn:
    """Skip the test (or the whole module) that needs `what`, which is missing; where the environment variable
    `variable` is set (.ci/run sets it), fail it instead: CI runs every test or goes red."""
    if os.environ.get(variable):
        pytest.fail(f"{variable} is set but {what}", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def require(module: str) -> ModuleType:
    """`module` of an optional extra (`make` installs them all), imported; where it is missing or fails to import,
    the test is skipped, or failed under NIN_REQUIRE_EXTRAS (see `unavailable`)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        unavailable(f"{module} (an optional extra: pip install -e '.[dev]') cannot be imported: {e}")


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


def require_system(*commands: str) -> list[str]:
    """The paths of `commands` (Debian programs that `make test` installs as root: see the Makefile's `system`);
    a missing one skips the test, or fails it under NIN_REQUIRE_SYSTEM (see `unavailable`)."""
    paths = [shutil.which(command) for command in commands]
    if missing := [command for command, path in zip(commands, paths) if path is None]:
        unavailable(f"{', '.join(missing)} not found (make test installs it, as root)", "NIN_REQUIRE_SYSTEM")
    return paths


def stopped_after_epoch_1(monkeypatch, run_training) -> None:
    """Call `run_training()` with a SIGTERM arriving in epoch 1's evaluation: the run stops after epoch
    1's checkpoint, as a scheduler's SIGTERM stops it."""
    from nin.training.guards import Stopped

    train_module = importlib.import_module("nin.training.loop")

    real = train_module.evaluate_accuracy

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(train_module, "evaluate_accuracy", signalled)
        with pytest.raises(Stopped):
            run_training()


# The seed notebook's shape walk (d2l's NiN chapter, In [6]), its printout verbatim (tabs included).
SEED_SHAPE_WALK = """\
Sequential output shape:\t torch.Size([1, 96, 54, 54])
MaxPool2d output shape:\t torch.Size([1, 96, 26, 26])
Sequential output shape:\t torch.Size([1, 256, 26, 26])
MaxPool2d output shape:\t torch.Size([1, 256, 12, 12])
Sequential output shape:\t torch.Size([1, 384, 12, 12])
MaxPool2d output shape:\t torch.Size([1, 384, 5, 5])
Dropout output shape:\t torch.Size([1, 384, 5, 5])
Sequential output shape:\t torch.Size([1, 10, 5, 5])
AdaptiveAvgPool2d output shape:\t torch.Size([1, 10, 1, 1])
Flatten output shape:\t torch.Size([1, 10])
"""
