"""The KL autoencoder: shapes, downsample factor, logvar clamp, sizes (its parity with diffusers:
tests/convert/test_convert_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models import VAE_PRESETS, AutoencoderKL
from jaxdiff.models.abstract import eval_shape

TINY = VAE_PRESETS["tiny"]


def _image(batch=2, size=16, seed=0):
    rng = np.random.RandomState(seed)
    return jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)  # [B, H, W, 3]


def _encode_decode(vae, x):
    """(mean, logvar, decode(mean)) in one compiled call."""
    graphdef, state = nnx.split(vae)

    @jax.jit
    def run(state, x):
        model = nnx.merge(graphdef, state)
        mean, logvar = model.encode(x)
        return mean, logvar, model.decode(mean)

    return run(state, x)


def test_encode_decode_shapes_and_downsample_factor():
    vae = AutoencoderKL(**TINY, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    assert vae.downsample_factor == 2
    mean, logvar, recon = _encode_decode(vae, _image())
    assert mean.shape == logvar.shape == (2, 8, 8, 4)
    assert recon.shape == (2, 16, 16, 3)
    assert all(np.isfinite(np.asarray(a)).all() for a in (mean, logvar, recon))


@pytest.mark.parametrize(("preset", "factor"), [("shapes", 4), ("sd_vae", 8)])
def test_presets_map_images_to_latents(preset, factor):
    vae = eval_shape(lambda: AutoencoderKL(**VAE_PRESETS[preset], rngs=nnx.Rngs(0)))
    assert vae.downsample_factor == factor
    graphdef, state = nnx.split(vae)
    image = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    mean, logvar = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state, image)
    assert mean.shape == logvar.shape == (2, 32 // factor, 32 // factor, 4)
    z = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32)
    recon = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s).decode(z), state, z)
    assert recon.shape == (2, 8 * factor, 8 * factor, 3)


def test_logvar_is_clamped(random_model):
    vae = random_model(lambda: AutoencoderKL(**TINY, rngs=nnx.Rngs(0)))
    bias = vae.quant_conv.bias[...]
    vae.quant_conv.bias[...] = bias.at[4:].set(100.0)  # the logvar half of the moments
    _, logvar, _ = _encode_decode(vae, _image())
    np.testing.assert_array_equal(np.asarray(logvar), 20.0)


def test_mid_block_attention_is_optional():
    vae = eval_shape(lambda: AutoencoderKL(**TINY, mid_block_add_attention=False, rngs=nnx.Rngs(0)))
    assert len(vae.encoder.mid_block.attentions) == 0
    assert len(vae.decoder.mid_block.attentions) == 0
    assert len(vae.decoder.up_blocks[0].resnets) == TINY["layers_per_block"] + 1


def test_every_parameter_has_logical_axes(check_logical_axes):
    check_logical_axes(eval_shape(lambda: AutoencoderKL(**TINY, rngs=nnx.Rngs(0))))


def test_sd_vae_preset_has_the_reference_parameter_count(count_params):
    vae = eval_shape(lambda: AutoencoderKL(**VAE_PRESETS["sd_vae"], rngs=nnx.Rngs(0)))
    assert count_params(vae) == 83_653_863
    assert vae.scaling_factor == 0.18215
