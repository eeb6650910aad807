"""Config files and command-line overrides."""

import json
import re
import sys
from pathlib import Path

import pytest

from jaxdiff.config_groups import missing_fields
from jaxdiff.configuration import config_names, from_json, load_config, to_json
from jaxdiff.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["shapes_vae.py", "shapes_t2i.py"])
@pytest.mark.parametrize("arg", ["", ":tiny"])
def test_every_config_loads_and_is_locked(name, arg):
    config = load_config(f"{CONFIGS / name}{arg}")
    assert config.train.steps > 0
    with pytest.raises(AttributeError):
        config.not_a_field = 1


def test_overrides_are_parsed_to_the_existing_type():
    config = load_config(
        f"{CONFIGS / 'shapes_t2i.py'}:tiny",
        [
            "train.steps=7",
            "train.learning_rate=0.5",
            "model.unet.block_out_channels=(8, 16)",
            "vae_workdir=/some/where",
            "data.background=plain",
        ],
    )
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.train.learning_rate == 0.5
    assert config.model.unet.block_out_channels == (8, 16)
    assert config.vae_workdir == "/some/where"


def test_a_tuple_of_names_takes_a_comma_separated_list():
    config = load_config("sd15_lora:tiny", ["lora.unet_targets=to_q, to_out.0,ff.net.2"])
    assert config.lora.unet_targets == ("to_q", "to_out.0", "ff.net.2")
    config = load_config("sd15_lora:tiny", ["lora.text_encoder_targets=q_proj"])
    assert config.lora.text_encoder_targets == ("q_proj",)
    config = load_config(
        "sd15_lora:tiny", ["lora.unet_targets=('to_k',)", "lora.text_encoder_targets=()"]
    )
    assert config.lora.unet_targets == ("to_k",) and config.lora.text_encoder_targets == ()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stesp=3", "unknown config key 'train.stesp'; keys at train:"),
        ("nope.steps=3", "unknown config key 'nope.steps'"),
        ("train.steps=ten", "config key 'train.steps' takes int, got 'ten'"),
        ("train.learning_rate=fast", "takes float"),
        ("train", "has no '='"),
        ("train=3", "is a group"),
        ("model.unet.block_out_channels=(8,", "takes a tuple"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(f"{CONFIGS / 'shapes_t2i.py'}:tiny", [override])


def test_missing_config_file():
    with pytest.raises(UserError, match=re.escape("config file 'nowhere.py' not found")):
        load_config("nowhere.py")


def test_json_round_trip():
    config = load_config(f"{CONFIGS / 'shapes_t2i.py'}")
    assert from_json(to_json(config)).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "spec",
    [
        "shapes_vae.py",
        "shapes_vae.py:tiny",
        "shapes_t2i.py",
        "shapes_t2i.py:tiny",
        "cifar10_edm.py",
        "cifar10_edm.py:tiny",
        "sd15_finetune.py",
        "sd15_finetune.py:tfds",
        "sd15_finetune.py:tiny",
        "sd15_lora.py",
        "sd15_lora.py:tiny",
        "sd15_controlnet.py",
        "sd15_controlnet.py:tiny",
        "shapes_controlnet.py",
        "shapes_controlnet.py:tiny",
        "shapes_lora.py",
        "shapes_lora.py:tiny",
        "shapes_flow.py",
        "shapes_flow.py:tiny",
    ],
)
def test_every_training_config_holds_the_shared_fields(spec):
    """The fields a saved workdir config is checked for are in every config of every task."""
    assert missing_fields(json.loads(to_json(load_config(str(CONFIGS / spec))))) == []


def test_a_shipped_config_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = load_config("shapes_t2i:tiny", ["train.steps=7"])
    by_path = load_config(f"{CONFIGS / 'shapes_t2i.py'}:tiny", ["train.steps=7"])
    assert by_name.to_dict() == by_path.to_dict()
    assert "shapes_vae" in config_names() and "common" not in config_names()


def test_a_relative_path_from_the_checkout_still_loads(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    assert load_config("configs/shapes_vae.py:tiny").train.steps > 0


def test_a_config_folder_elsewhere_imports_its_siblings(tmp_path):
    (tmp_path / "shared.py").write_text("STEPS = 5\n")
    (tmp_path / "mine.py").write_text(
        "import ml_collections\n\nfrom . import shared\n\n\n"
        "def get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'steps': shared.STEPS, 'arg': arg or ''})\n"
    )
    config = load_config(f"{tmp_path / 'mine.py'}:x")
    assert (config.steps, config.arg) == (5, "x")
    assert not [name for name in sys.modules if name.startswith("jaxdiff_config_folder_")]


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown config 'shapes'; known names: .*shapes_t2i"):
        load_config("shapes:tiny")
