import argparse
import dataclasses
import json

import pytest

from nin.cli import add_config_flags
from nin.config import Config, field_types, from_dict, load_config, load_preset, presets
from nin.errors import NinError


def test_d2l_preset_is_the_seed_recipe():
    config = load_preset("d2l")
    seed = dict(arch="nin", resize=224, epochs=5, batch_size=256, lr=0.05, momentum=0.0, weight_decay=0.0,
                dropout=0.5, init="xavier", schedule="constant", label_smoothing=0.0, augment="none",
                val_split=0)  # fmt: skip
    assert {k: getattr(config, k) for k in seed} == seed
    assert config.precision == "fp32"  # d2l's numerics on every device
    assert config == Config()  # the dataclass defaults are the seed's too


def test_every_preset_round_trips_through_a_run_config():
    assert {"d2l", "quick", "fast", "best"} <= set(presets())
    for name in presets():
        config = load_preset(name)
        assert from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_preset_lists_the_choices():
    with pytest.raises(NinError, match="unknown preset 'fats'; choose from best, d2l, fast, mnist, quick"):
        load_preset("fats")


def test_config_file_round_trip(tmp_path):
    config = Config(epochs=2, lr=0.1, resize=96)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert load_config(path) == config
    toml = tmp_path / "mine.toml"
    toml.write_text("epochs = 3\nlr = 1  # an int is a fine float\n")
    assert load_config(toml) == Config(epochs=3, lr=1.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochz = 3", "unknown setting.*epochz.*valid: arch, width, resize"),
        ("arch = 'resnet'", "arch must be one of nin, nin-bn"),
        ("schedule = 'cosine'", "schedule must be one of constant, onecycle"),
        ("augment = 'mixup'", "augment must be one of none, flip, crop, flip-crop, flip-crop-erase"),
        ("warmup = 1.5", "warmup must be a share of the steps"),
        ("label_smoothing = 1.0", "label_smoothing must be in"),
        ("val_split = -1", "val_split must be 0"),
        ("weight_decay = -0.1", "weight_decay must be 0 or positive"),
        ("width = 0", "width must be at least 1"),
        ("epochs = 'three'", "epochs should be int"),
        ("epochs = true", "epochs should be int"),
        ("lr = -1.0", "lr must be positive"),
        ("resize = 0", "resize must be at least 1"),
        ("device = 'tpu'", "device must be one of auto, cpu, cuda, mps"),
        ("init = 'zeros'", "init must be one of xavier, kaiming"),
        ("seed = -1", "seed must be in"),
        ("epochs = ", "not valid TOML"),
        ("lr = inf", "lr must be a finite number, got inf"),
        ("weight_decay = inf", "weight_decay must be a finite number, got inf"),
    ],
)
def test_bad_config_file_gives_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(NinError, match=message) as e:
        load_config(path)
    assert str(e.value).startswith(str(path))  # the file is named


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"abc"'])
def test_json_config_must_be_an_object(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(NinError, match="expected a table of settings"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(NinError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_from_dict_names_the_source():
    with pytest.raises(NinError, match="^ckpt: unknown setting"):
        from_dict({"colour": 1}, source="ckpt")


def test_sizes_have_an_upper_limit():
    """image_size (a folder's decoded size, cached in memory) and resize are bounded like any other setting."""
    for name in ("image_size", "resize"):
        assert getattr(Config(**{name: 1024}), name) == 1024
        with pytest.raises(NinError, match=f"^{name} 1000000 is larger than 1024, the most nin takes"):
            Config(**{name: 10**6})
    with pytest.raises(NinError, match="image_size 4096 is larger than 1024"):
        from_dict({"image_size": 4096}, source="settings")


@dataclasses.dataclass(frozen=True)
class Extended(Config):
    """Config with the kinds of field a later feature may add."""

    pin_memory: bool = dataclasses.field(default=False, metadata={"help": "a switch"})
    max_steps: int | None = dataclasses.field(default=None, metadata={"help": "a number, or none"})


def test_field_types_come_from_the_type_hints():
    types = field_types(Extended)
    assert (types["pin_memory"], types["max_steps"], types["lr"], types["arch"]) == (
        (bool, False), (int, True), (float, False), (str, False))  # fmt: skip
    assert from_dict({"pin_memory": True, "max_steps": None}, cls=Extended) == Extended(pin_memory=True)
    loaded = from_dict({"max_steps": 7, "lr": 1}, cls=Extended)
    assert loaded.max_steps == 7 and loaded.lr == 1.0 and isinstance(loaded.lr, float)
    for values, message in (({"pin_memory": 1}, "pin_memory should be bool"), ({"max_steps": 1.5}, "int or None"),
                            ({"max_steps": True}, "int or None"), ({"lr": None}, "lr should be float,")):  # fmt: skip
        with pytest.raises(NinError, match=message):
            from_dict(values, cls=Extended)


def test_flags_come_from_the_type_hints():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Extended)
    given = vars(parser.parse_args(["--pin-memory", "--max-steps", "none", "--lr", "0.1", "--arch", "nin-bn"]))
    assert given == {"pin_memory": True, "max_steps": None, "lr": 0.1, "arch": "nin-bn"}
    assert vars(parser.parse_args(["--no-pin-memory", "--max-steps", "3"])) == {"pin_memory": False, "max_steps": 3}
    assert vars(parser.parse_args([])) == {}  # a flag not given overrides nothing


def test_a_value_out_of_range_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("image_size = 4096\n")
    with pytest.raises(NinError, match=f"^{path}: image_size 4096 is larger than 1024"):
        load_config(path)
