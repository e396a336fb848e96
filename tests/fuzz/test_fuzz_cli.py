"""Fuzz `nin`'s flags, in-process through `nin.cli.main([...])`: every command line exits 0, or 2 with one
`nin: error:` line (argparse's own usage errors: its usage and one `error:` line), never a traceback, and
writes nothing outside the current directory. Training is replaced by a stand-in that stops once the run's
settings are checked (what a real run would then do is the training tests' business)."""

import contextlib
import io
from pathlib import Path

import pytest
from fuzzing import SEEDS, examples, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st

import nin
from nin.cli import main
from nin.config import FIELDS

PACKAGE = Path(nin.__file__).parent
CHOICES = sorted({str(c) for f in FIELDS.values() for c in f.metadata["choices"]} | {"fast", "quick", "best", "d2l"})
# what a shell can pass: any text but NUL (argv cannot hold it) and lone surrogates
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
value = st.one_of(
    st.integers(-5, 300).map(str), st.sampled_from(["0", "-1", "1e9", "2e-3", "nan", "inf", "none", "", "10**6"]),
    st.sampled_from(CHOICES), text,
)  # fmt: skip
config_flags = [f"--{name.replace('_', '-')}" for name in FIELDS]


class Trained(Exception):
    """What the stand-in for the training loop raises: the command line was valid up to training."""


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(["summary", "train", "sweep", "predict", "cam", "evaluate", "weights"]))
    args = [command]
    if command == "summary":
        flags = ["--preset", "--arch", "--width", "--resize", "--dataset", "--data-dir"]
    elif command in ("train", "sweep"):
        own = ["--seeds"] if command == "sweep" else ["--resume", "--force", "--auto-resume"]
        flags = ["--preset", "--config", "--out", *config_flags, *own]
    elif command in ("predict", "cam", "evaluate"):
        args += ["--weights", draw(st.sampled_from(["fast", "mnist-fast", "slow", ""]))]
        flags = {"predict": ["--json", "--resize"], "cam": ["--test-samples", "--out", "--json"],
                 "evaluate": ["--test-limit", "--json", "--tta"]}[command]  # fmt: skip
        if command != "evaluate":  # image files: real, damaged, or missing
            for i in range(draw(st.integers(0, 2))):
                data = draw(st.one_of(st.sampled_from(list(SEEDS.values())), mutated(), st.none()))
                if data is not None:
                    Path(f"image{i}.png").write_bytes(data)
                args.append(f"image{i}.png")
    else:
        args += draw(st.lists(st.sampled_from(["fast", "mnist-fast", "none"]) | text, max_size=1))
        flags = ["--json"]
    for flag in draw(st.lists(st.sampled_from(flags), max_size=4)):
        if flag in ("--json", "--tta", "--force", "--auto-resume"):
            args.append(flag)
        elif flag == "--test-limit":  # 0 (all 10,000 images) is the evaluate tests' business: too slow here
            args += [flag, draw(st.sampled_from(["-1", "1", "17", "x", "", "1e3"]))]
        else:
            args += [flag, draw(value)]
    return args


@pytest.fixture
def training_stops(monkeypatch):
    def stand_in(*args, **kwargs):
        raise Trained

    monkeypatch.setattr("nin.api.train_loop", stand_in)
    monkeypatch.setattr("nin.training.sweep.sweep", stand_in)


def files_of(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
@examples(20)  # about 0.5 s each: the commands load weights and draw plots
@given(st.data())
def test_command_lines(tmp_path_factory, monkeypatch, training_stops, data):
    package = {p: p.stat().st_mtime_ns for p in files_of(PACKAGE)}
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    argv = data.draw(command_lines())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: a usage error (2: its usage, then "nin ...: error: ..."), or --help (0)
            code = e.code
            assert code == 0 or (err.getvalue().startswith("usage: nin") and ": error: " in err.getvalue())
        except Trained:
            code = 0
    assert code in (0, 2), (argv, code, err.getvalue())
    outcome("", prefix=f"{argv[0]}: exit {code}")
    assert "Traceback" not in err.getvalue(), err.getvalue()
    if code == 2 and not err.getvalue().startswith("usage:"):  # one line, unless it quotes an argument with newlines
        lines = 1 + sum(arg.count("\n") for arg in argv)
        assert err.getvalue().startswith("nin: error: ") and 1 <= err.getvalue().count("\n") <= lines, err.getvalue()
    assert {p: p.stat().st_mtime_ns for p in files_of(PACKAGE)} == package  # nothing written into nin itself
