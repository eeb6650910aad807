"""Shared layers: norms, time embedding, resampling, attention core, logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.attention import attention
from jaxdiff.models.embeddings import timestep_embedding
from jaxdiff.models.layers import (
    LOGICAL_AXES,
    Downsample2D,
    GroupNorm,
    LayerNorm,
    Upsample2D,
    dense,
)


def _randomize(norm, channels, rng):
    norm.scale[...] = jnp.asarray(rng.randn(channels), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.randn(channels), jnp.float32)


def test_group_norm_matches_torch():
    rng = np.random.RandomState(0)
    x = rng.randn(2, 5, 6, 32).astype(np.float32) * 3 + 1  # [B, H, W, C]
    norm = GroupNorm(8, 32, 1e-6)
    _randomize(norm, 32, rng)
    ref = torch.nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
        ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, atol=2e-5)
    # The check can fail: statistics over 4 groups of 8 channels instead of 8 groups of 4.
    wrong = GroupNorm(4, 32, 1e-6)
    nnx.update(wrong, nnx.state(norm))
    assert np.abs(np.asarray(wrong(jnp.asarray(x))) - expected).max() > 10 * 2e-5


def test_layer_norm_matches_torch():
    rng = np.random.RandomState(1)
    x = rng.randn(2, 7, 16).astype(np.float32)
    norm = LayerNorm(16, 1e-5)
    _randomize(norm, 16, rng)
    ref = torch.nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
        ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, atol=2e-5)


def test_norms_compute_in_float32_and_return_compute_dtype():
    x = jnp.full((1, 2, 2, 8), 1000.0, jnp.bfloat16) + jnp.arange(8, dtype=jnp.bfloat16)
    y = GroupNorm(2, 8, 1e-6, dtype=jnp.bfloat16)(x)
    assert y.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(y, np.float32)).all()


def test_group_norm_rejects_groups_not_dividing_channels():
    with pytest.raises(UserError, match="norm_num_groups=32"):
        GroupNorm(32, 48, 1e-6)


@pytest.mark.parametrize(
    ("dim", "flip", "shift"), [(32, True, 0), (32, False, 1), (33, True, 1), (8, False, 0)]
)
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    expected = get_timestep_embedding(
        torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift
    ).numpy()
    got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_downsample_padding_modes():
    x = jnp.ones((1, 8, 8, 4))
    down_unet = Downsample2D(4, 1, rngs=nnx.Rngs(0))
    down_vae = Downsample2D(4, 0, rngs=nnx.Rngs(0))
    assert down_unet(x).shape == (1, 4, 4, 4)
    assert down_vae(x).shape == (1, 4, 4, 4)
    # The VAE variant pads only bottom/right: its top-left output sees no padding.
    k = down_vae.conv.kernel[...]
    expected = jnp.sum(k, axis=(0, 1, 2)) + down_vae.conv.bias[...]
    np.testing.assert_allclose(down_vae(x)[0, 0, 0], expected, rtol=1e-5)


def test_upsample_is_nearest_then_conv():
    x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
    up = Upsample2D(2, rngs=nnx.Rngs(0))
    nearest = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(up(x), up.conv(nearest), rtol=1e-6)
    assert up(x).shape == (2, 6, 6, 2)


def _naive_attention(q, k, v, causal):
    logits = np.einsum("bnhd,bthd->bhnt", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhnt,bthd->bnhd", w, v)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive(causal):
    rng = np.random.RandomState(2)
    q, k, v = (rng.randn(2, 5, 3, 4).astype(np.float32) for _ in range(3))
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), is_causal=causal)
    np.testing.assert_allclose(got, _naive_attention(q, k, v, causal), atol=1e-5)


def test_attention_upcast_keeps_dtype():
    q = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
    assert attention(q, q, q, upcast=True).dtype == jnp.bfloat16


def test_parameters_shard_by_logical_rules_inside_a_mesh():
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = tuple((name, "fsdp" if name == "embed" else None) for name in LOGICAL_AXES)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        layer = dense(8, 16, ("embed", "mlp"), rngs=nnx.Rngs(0))
        specs = nnx.get_partition_spec(nnx.state(layer, nnx.Param))
    assert layer.kernel[...].sharding.spec == jax.P("fsdp", None)
    assert specs["kernel"].get_value() == jax.P("fsdp", None)
    assert specs["bias"].get_value() == jax.P(None)


@pytest.mark.parametrize("group", [("heads", "mlp", "conv_out", "vocab"), ("embed", "conv_in")])
def test_fsdp_rule_groups_give_valid_specs_for_every_model(group):
    from jaxdiff.models import (
        CLIP_TEXT_PRESETS,
        UNET_PRESETS,
        VAE_PRESETS,
        AutoencoderKL,
        CLIPTextTransformer,
        UNet,
    )

    models = [
        lambda: UNet(**UNET_PRESETS["tiny"], use_linear_projection=True, rngs=nnx.Rngs(0)),
        lambda: UNet(**UNET_PRESETS["tiny"], rngs=nnx.Rngs(0)),
        lambda: AutoencoderKL(**VAE_PRESETS["tiny"], rngs=nnx.Rngs(0)),
        lambda: CLIPTextTransformer(
            **CLIP_TEXT_PRESETS["tiny"], projection_dim=8, rngs=nnx.Rngs(0)
        ),
    ]
    rules = tuple((name, "fsdp" if name in group else None) for name in LOGICAL_AXES)
    for factory in models:
        state = nnx.state(eval_shape(factory), nnx.Param)
        with nnx.logical_axis_rules(rules):
            specs = jax.tree.leaves(nnx.get_partition_spec(state))
        assert specs
        assert all(tuple(spec).count("fsdp") <= 1 for spec in specs)
        assert any("fsdp" in tuple(spec) for spec in specs)


def test_parameters_without_a_mesh_keep_their_names():
    layer = dense(8, 16, ("embed", "mlp"), rngs=nnx.Rngs(0))
    assert layer.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")
    assert layer.bias.get_metadata()["out_sharding"] == ("mlp",)
