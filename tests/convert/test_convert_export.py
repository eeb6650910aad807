"""Writing converted models back: diffusers / transformers format and jaxdiff's own format."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import CONTROLNET_CONFIGS, UNET_CONFIGS, VAE_CONFIGS

from jaxdiff.convert import from_diffusers, native, to_diffusers
from jaxdiff.convert.safetensors_io import read_safetensors

PREFIX = "text_model."


def _weights(folder) -> dict[str, np.ndarray]:
    """A component's tensors by name; transformers' CLIP prefix removed (it writes
    `CLIPTextModel` keys without it, the hub's checkpoints and jaxdiff with it)."""
    name = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    return {k.removeprefix(PREFIX): v for k, v in read_safetensors(name).items()}


def _assert_same_bytes(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def _saved(request, kind, name):
    return request.getfixturevalue(f"saved_{kind}")[name]


COMPONENTS = [
    *(("unets", n) for n in UNET_CONFIGS),
    *(("controlnets", n) for n in CONTROLNET_CONFIGS),
    *(("vaes", n) for n in VAE_CONFIGS),
    ("clips", "quick_gelu"),
    ("clips", "projection"),
]


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_round_trip_gives_the_same_tensors_byte_for_byte(kind, name, request, tmp_path):
    _, folder = _saved(request, kind, name)
    model = from_diffusers(folder)
    to_diffusers(model, tmp_path / "out")
    _assert_same_bytes(_weights(folder), _weights(tmp_path / "out"))
    assert from_diffusers(tmp_path / "out").architecture == model.architecture


def test_diffusers_file_is_identical_to_the_one_diffusers_writes(saved_unets, tmp_path):
    _, folder = saved_unets["sd1"]
    to_diffusers(from_diffusers(folder), tmp_path / "unet")
    name = "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "unet" / name).read_bytes() == (folder / name).read_bytes()


def test_exported_models_load_in_the_reference_libraries(
    saved_unets, saved_controlnets, saved_vaes, saved_clips, tmp_path
):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    for (ref, folder), cls in (
        (saved_unets["options"], UNet2DConditionModel),
        (saved_controlnets["sd2"], ControlNetModel),
        (saved_vaes["sd"], AutoencoderKL),
        (saved_clips["projection"], CLIPTextModelWithProjection),
    ):
        out = tmp_path / folder.name
        to_diffusers(from_diffusers(folder), out)
        loaded = cls.from_pretrained(out)
        assert type(loaded) is type(ref)
        expected = ref.state_dict()
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, expected[key]), key


def test_half_precision_export_casts_each_tensor(saved_vaes, tmp_path):
    _, folder = saved_vaes["no_mid_attention"]
    to_diffusers(from_diffusers(folder), tmp_path / "fp16", dtype=np.float16)
    half, full = _weights(tmp_path / "fp16"), _weights(folder)
    for key, value in full.items():
        assert half[key].dtype == np.float16
        np.testing.assert_array_equal(half[key], value.astype(np.float16))
    # float16 -> float32 -> float16 is exact.
    to_diffusers(from_diffusers(tmp_path / "fp16"), tmp_path / "again", dtype=np.float16)
    _assert_same_bytes(half, _weights(tmp_path / "again"))


@pytest.mark.parametrize(
    ("kind", "name"),
    [("unets", "sd2"), ("controlnets", "pooled"), ("vaes", "sd"), ("clips", "gelu")],
)
def test_jaxdiff_format_round_trip(kind, name, request, tmp_path):
    _, folder = _saved(request, kind, name)
    model = from_diffusers(folder)
    native.save(model, tmp_path / "native")
    loaded = native.load(tmp_path / "native")
    assert type(loaded) is type(model)
    assert loaded.architecture == model.architecture
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        nnx.state(model, nnx.Param),
        nnx.state(loaded, nnx.Param),
    )
    assert all(jax.tree.leaves(same))


def test_jaxdiff_format_loads_in_bfloat16(saved_clips, tmp_path):
    _, folder = saved_clips["gelu"]
    native.save(from_diffusers(folder), tmp_path / "native")
    loaded = native.load(tmp_path / "native", param_dtype=jax.numpy.bfloat16)
    dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(loaded, nnx.Param))}
    assert dtypes == {np.dtype(jax.numpy.bfloat16)}
