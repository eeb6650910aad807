"""The CLIP text encoder: causal mask, EOS pooling, clip skip, errors, size (its parity with
transformers: tests/convert/test_convert_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models import CLIP_TEXT_PRESETS, CLIPTextTransformer
from jaxdiff.models.abstract import eval_shape

TINY = CLIP_TEXT_PRESETS["tiny"]  # eos_token_id 98, vocabulary 99
EOS = TINY["eos_token_id"]


@pytest.fixture(scope="module")
def encoder(random_model):
    return random_model(lambda: CLIPTextTransformer(**TINY, projection_dim=12, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def run(encoder):
    """input_ids [B, T] (, skip_last_layers) -> CLIPTextOutput, compiled."""
    graphdef, state = nnx.split(encoder)
    return jax.jit(
        lambda ids, skip=0: nnx.merge(graphdef, state)(ids, skip_last_layers=skip),
        static_argnums=1,
    )


def _ids(seed=0):
    ids = np.random.RandomState(seed).randint(1, 90, (2, 10))
    ids[:, 6:] = EOS  # EOS, then EOS used as padding
    ids[1, 4] = EOS  # the second prompt ends earlier
    return jnp.asarray(ids)


def test_output_shapes(run):
    out = run(_ids())
    assert out.last_hidden_state.shape == (2, 10, 32)
    assert out.pooled_output.shape == (2, 32)
    assert out.text_embeds.shape == (2, 12)


def test_causal_mask(run):
    ids = _ids()
    changed = ids.at[:, 7].set(5)
    a, b = run(ids).last_hidden_state, run(changed).last_hidden_state
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-3


def test_pooling_at_the_first_eos(run, encoder):
    ids = _ids()
    out = run(ids)
    np.testing.assert_allclose(out.pooled_output[0], out.last_hidden_state[0, 6], atol=1e-6)
    np.testing.assert_allclose(out.pooled_output[1], out.last_hidden_state[1, 4], atol=1e-6)
    expected = out.pooled_output @ encoder.text_projection.kernel[...]
    np.testing.assert_allclose(out.text_embeds, expected, atol=1e-5)


def test_legacy_eos_id_pools_at_the_largest_token_id(random_model):
    legacy = random_model(
        lambda: CLIPTextTransformer(**{**TINY, "eos_token_id": 2}, rngs=nnx.Rngs(0))
    )
    ids = jnp.asarray([[5, 3, 97, 2, 2, 2]])
    out = legacy(ids)
    np.testing.assert_allclose(out.pooled_output[0], out.last_hidden_state[0, 2], atol=1e-6)
    assert out.text_embeds is None


def test_skip_last_layers_is_the_normed_penultimate_layer(run, encoder):
    ids = _ids()
    skipped = run(ids, 1)
    h = encoder.embeddings(ids)
    for layer in encoder.encoder.layers[:-1]:
        h = layer(h)
    np.testing.assert_allclose(skipped.last_hidden_state, encoder.final_layer_norm(h), atol=1e-5)
    np.testing.assert_allclose(skipped.pooled_output, run(ids).pooled_output, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m(jnp.zeros((1, 4), jnp.int32), skip_last_layers=2), "skip_last_layers=2"),
        (lambda m: m(jnp.zeros((1, 4), jnp.int32), skip_last_layers=-1), "skip_last_layers=-1"),
        (lambda m: m(jnp.zeros((1, 17), jnp.int32)), "length 17; accepted: at most 16"),
    ],
)
def test_bad_calls_raise_user_error(encoder, call, match):
    with pytest.raises(UserError, match=match):
        call(encoder)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(hidden_act="relu"), "'relu'; accepted: quick_gelu, gelu"),
        (dict(num_attention_heads=5), "5"),
    ],
)
def test_bad_configuration_raises_user_error(overrides, match):
    with pytest.raises(UserError, match=match):
        eval_shape(lambda: CLIPTextTransformer(**{**TINY, **overrides}, rngs=nnx.Rngs(0)))


def test_real_initialization_and_logical_axes(check_logical_axes):
    encoder = CLIPTextTransformer(
        **TINY, projection_dim=12, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))
    )
    check_logical_axes(encoder)
    assert np.isfinite(np.asarray(encoder(_ids()).pooled_output)).all()


@pytest.mark.parametrize(
    ("preset", "projection_dim", "expected"),
    [("clip_vit_l14", None, 123_060_480), ("clip_vit_l14", 768, 123_650_304)],
)
def test_clip_vit_l14_has_the_reference_parameter_count(
    preset, projection_dim, expected, count_params
):
    encoder = eval_shape(
        lambda: CLIPTextTransformer(
            **CLIP_TEXT_PRESETS[preset], projection_dim=projection_dim, rngs=nnx.Rngs(0)
        )
    )
    assert count_params(encoder) == expected
