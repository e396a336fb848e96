"""Fuzz config files: TOML and JSON tables of real and unknown settings with values of every type (inf and
nan too), random text, and mutated presets give a Config or one NinError naming the file."""

import json
import math

from fuzzing import examples, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st

from nin.config import FIELDS, PRESETS_DIR, Config, load_config
from nin.errors import NinError

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # lone surrogates: not in TOML or UTF-8
scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(-3, 300), st.floats(), st.booleans(), text,
    st.sampled_from([c for f in FIELDS.values() for c in f.metadata["choices"]]),
)  # fmt: skip
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(text, scalars, max_size=2))
keys = st.one_of(st.sampled_from(sorted(FIELDS)), text)
tables = st.dictionaries(keys, values, max_size=6)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    # ints, finite floats, and strings: JSON's escapes of control characters are TOML's (\\uD83D pairs are not)
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def check_config(path) -> None:
    try:
        config = load_config(path)
    except NinError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        outcome(str(e).replace(str(path), "FILE"))
    else:
        assert isinstance(config, Config)
        outcome("a Config")
        assert all(math.isfinite(v) for v in config.to_dict().values() if isinstance(v, float))


@examples(100)
@given(tables, st.booleans())
def test_tables_of_settings(tmp_path_factory, table, as_json):
    path = tmp_path_factory.mktemp("config") / ("config.json" if as_json else "config.toml")
    path.write_text(json.dumps(table) if as_json else "".join(f"{toml_value(k)} = {toml_value(v)}\n"
                                                              for k, v in table.items()))  # fmt: skip
    check_config(path)


PRESETS = {p.name: p.read_bytes() for p in PRESETS_DIR.glob("*.toml")}


@examples(60)
@given(st.one_of(st.binary(max_size=200), mutated(PRESETS)), st.sampled_from(["config.toml", "config.json"]))
def test_random_and_mutated_files(tmp_path_factory, data, name):
    path = tmp_path_factory.mktemp("config") / name
    path.write_bytes(data)
    check_config(path)
