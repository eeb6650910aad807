"""`jaxdiff convert`: network and model folders to jaxdiff's format and back, byte for byte.

The sources are the session fixtures' folders, written by diffusers / transformers; the converted
folders must load in those libraries again. Bad input ends with exit code 2 and one line on
stderr, and a conversion that fails midway leaves no folder behind.
"""

import json
import shutil

import numpy as np
import pytest

from jaxdiff.cli import main
from jaxdiff.convert.safetensors_io import read_safetensors

PREFIX = "text_model."
NETWORKS = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


def _convert(source, out, to: str, *extra: str) -> None:
    assert main(["convert", str(source), str(out), "--to", to, *extra]) == 0


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _tensors(path) -> dict[str, np.ndarray]:
    """A weights file's tensors by name, transformers' CLIP prefix removed (transformers 5 writes
    `CLIPTextModel` keys without it, jaxdiff with it, as the hub's checkpoints have them)."""
    return {key.removeprefix(PREFIX): value for key, value in read_safetensors(path).items()}


def _assert_same_bytes(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), key


def _assert_same_state(loaded, reference) -> None:
    """A torch module loaded from a converted folder holds the reference module's parameters."""
    import torch

    assert type(loaded) is type(reference)
    expected = reference.state_dict()
    assert sorted(loaded.state_dict()) == sorted(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_network_to_jaxdiff_and_back(saved_unets, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    reference, source = saved_unets["options"]
    _convert(source, tmp_path / "native", "jaxdiff")
    assert (tmp_path / "native" / "jaxdiff_model.json").is_file()
    assert "-> jaxdiff" in capsys.readouterr().out
    _convert(tmp_path / "native", tmp_path / "back", "diffusers")
    name = NETWORKS["unet"]
    _assert_same_bytes(_tensors(tmp_path / "back" / name), _tensors(source / name))
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "back")
    _assert_same_state(loaded, reference)


@pytest.fixture(scope="module")
def converted_pipeline(saved_pipeline, tmp_path_factory):
    """`saved_pipeline` converted to jaxdiff's format and back to diffusers'."""
    out = tmp_path_factory.mktemp("converted")
    _convert(saved_pipeline, out / "native", "jaxdiff")
    _convert(out / "native", out / "back", "diffusers")
    return out / "back"


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_model_folder_round_trip_keeps_every_tensor(saved_pipeline, converted_pipeline, network):
    name = NETWORKS[network]
    want = _tensors(saved_pipeline / network / name)
    _assert_same_bytes(_tensors(converted_pipeline / network / name), want)


@pytest.mark.parametrize("folder", ["tokenizer", "scheduler"])
def test_model_folder_round_trip_copies(saved_pipeline, converted_pipeline, folder):
    assert _tree(converted_pipeline / folder) == _tree(saved_pipeline / folder)


def _model_index(folder) -> dict:
    return json.loads((folder / "model_index.json").read_text())


def test_model_folder_round_trip_keeps_the_components(saved_pipeline, converted_pipeline):
    source, converted = _model_index(saved_pipeline), _model_index(converted_pipeline)
    for key in ("_class_name", *NETWORKS, "tokenizer", "scheduler"):
        assert converted[key] == source[key], key


def test_model_folder_round_trip_keeps_pipeline_options(saved_pipeline, converted_pipeline):
    source, converted = _model_index(saved_pipeline), _model_index(converted_pipeline)
    assert converted["requires_safety_checker"] == source["requires_safety_checker"]


def test_converted_model_folder_loads_in_diffusers_and_transformers(
    saved_clips, converted_pipeline
):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    pipe = StableDiffusionPipeline.from_pretrained(converted_pipeline, safety_checker=None)
    assert type(pipe.text_encoder) is CLIPTextModel
    encoder, info = CLIPTextModel.from_pretrained(
        converted_pipeline / "text_encoder", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _assert_same_state(encoder, saved_clips["quick_gelu"][0])


def test_float16_weights(saved_vaes, tmp_path):
    source = saved_vaes["no_mid_attention"][1]
    _convert(source, tmp_path / "half", "diffusers", "--dtype", "float16")
    name = NETWORKS["vae"]
    want = {key: value.astype(np.float16) for key, value in _tensors(source / name).items()}
    _assert_same_bytes(_tensors(tmp_path / "half" / name), want)
    # Without --dtype both ways keep float16: the round trip is byte for byte.
    _convert(tmp_path / "half", tmp_path / "native", "jaxdiff")
    _convert(tmp_path / "native", tmp_path / "again", "diffusers")
    _assert_same_bytes(_tensors(tmp_path / "again" / name), want)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{source}", "{out}", "--to", "onnx"], "to='onnx' is not supported; accepted: jaxdiff"),
        (["{missing}", "{out}", "--to", "jaxdiff"], "is not a folder or a hub id"),
        (["{source}", "{out}", "--to", "jaxdiff", "--config.seed=1"], "takes no config overrides"),
    ],
)
def test_bad_arguments(saved_vaes, tmp_path, capsys, args, message):
    paths = {
        "source": saved_vaes["no_mid_attention"][1],
        "out": tmp_path / "out",
        "missing": tmp_path / "missing",
    }
    err = _one_line_error(capsys, ["convert", *(a.format(**paths) for a in args)])
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_folder_is_left_alone(saved_vaes, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["convert", str(saved_vaes["no_mid_attention"][1]), str(out), "--to", "jaxdiff"]
    err = _one_line_error(capsys, argv)
    assert f"{out} exists and is not empty" in err
    assert _tree(tmp_path) == {"out/notes.txt": b"mine"}


def _broken_vae_config(folder) -> str:
    (folder / "vae" / "config.json").write_text(
        '{"_class_name": "AutoencoderKL", "act_fn": "gelu"}'
    )
    return "act_fn='gelu'"


def _no_tokenizer(folder) -> str:
    shutil.rmtree(folder / "tokenizer")
    return "tokenizer"


@pytest.mark.parametrize(
    "damage",
    [
        _broken_vae_config,
        _no_tokenizer,
    ],
)
def test_failed_conversion_leaves_no_folder(saved_pipeline, tmp_path, capsys, damage):
    source = shutil.copytree(saved_pipeline, tmp_path / "source")
    word = damage(source)
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    err = _one_line_error(capsys, ["convert", str(source), str(out), "--to", "jaxdiff"])
    assert word in err
    assert list(out.parent.iterdir()) == []
