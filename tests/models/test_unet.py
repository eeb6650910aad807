"""The conditional UNet: shapes, jit + grad, bf16, axis names, errors, size (its parity with
diffusers: tests/convert/test_convert_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models import UNET_PRESETS, UNet
from jaxdiff.models.abstract import eval_shape

TINY = UNET_PRESETS["tiny"]

# Everything the tiny preset leaves at its default: 9 input channels (inpainting), three levels
# with per-level heads, Linear projections, first attention to the context, two transformer
# blocks per level, the other time-projection convention.
VARIANT = dict(
    in_channels=9,
    out_channels=8,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    attention_head_dim=(1, 2, 4),
    cross_attention_dim=24,
    norm_num_groups=8,
    use_linear_projection=True,
    only_cross_attention=True,
    transformer_layers_per_block=2,
    flip_sin_to_cos=False,
    freq_shift=1,
)


def _inputs(batch=2, size=8, channels=4, tokens=5, width=32, seed=0):
    rng = np.random.RandomState(seed)
    x = jnp.asarray(rng.randn(batch, size, size, channels), jnp.float32)  # [B, H, W, C]
    t = jnp.asarray(rng.uniform(0, 1000, batch), jnp.float32)  # [B]
    ctx = jnp.asarray(rng.randn(batch, tokens, width), jnp.float32)  # [B, T, D]
    return x, t, ctx


def _forward(unet, *args):
    """One compiled call (eager dispatch would compile every primitive separately)."""
    graphdef, state = nnx.split(unet)
    return jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))(state, *args)


@pytest.fixture(scope="module")
def tiny(random_model):
    """(unet, inputs, fp32 output) of the tiny preset with random weights, built once."""
    unet = random_model(lambda: UNet(**TINY, rngs=nnx.Rngs(0)))
    inputs = _inputs()
    return unet, inputs, _forward(unet, *inputs)


def test_output_shape(tiny):
    _, _, out = tiny
    assert out.shape == (2, 8, 8, 4)
    assert out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_scalar_timestep_broadcasts(tiny):
    unet, (x, _, ctx), _ = tiny
    graphdef, state = nnx.split(unet)

    @jax.jit
    def both(state):
        model = nnx.merge(graphdef, state)
        return model(x, jnp.array(10.0), ctx), model(x, jnp.array([10.0, 10.0]), ctx)

    scalar, vector = both(state)
    np.testing.assert_allclose(scalar, vector, atol=1e-6)


def test_jit_through_split_merge_gives_finite_grads(tiny):
    unet, (x, t, ctx), out = tiny
    graphdef, params = nnx.split(unet)

    @jax.jit
    def loss_and_grad(params, x, t, ctx):
        def loss(params):
            return jnp.mean((nnx.merge(graphdef, params)(x, t, ctx) - x) ** 2)

        return jax.value_and_grad(loss)(params)

    loss, grads = loss_and_grad(params, x, t, ctx)
    np.testing.assert_allclose(float(loss), float(jnp.mean((out - x) ** 2)), rtol=1e-4)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(params))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_bf16_compute_with_fp32_params_is_close_to_fp32(tiny):
    unet, inputs, expected = tiny
    bf16 = eval_shape(lambda: UNet(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    nnx.update(bf16, nnx.state(unet))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    out = _forward(bf16, *inputs)
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out, np.float32) - np.asarray(expected)).max()
    assert err < 0.05 * np.abs(np.asarray(expected)).max(), err


def test_every_parameter_has_logical_axes(check_logical_axes):
    check_logical_axes(eval_shape(lambda: UNet(**TINY, rngs=nnx.Rngs(0))))
    check_logical_axes(eval_shape(lambda: UNet(**VARIANT, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(down_block_types=("CrossAttnDownBlock2D", "AttnDownBlock2D")), "AttnDownBlock2D"),
        (dict(up_block_types=("UpBlock2D", "Up")), "'Up'; accepted: CrossAttnUpBlock2D, UpBlock2D"),
        (dict(down_block_types=("DownBlock2D",)), "down_block_types has 1 entries"),
        (dict(attention_head_dim=(2, 4, 8)), r"attention_head_dim=\(2, 4, 8\); accepted: one posi"),
        (dict(attention_head_dim=2.0), r"attention_head_dim=2.0; accepted: one positive int"),
        (dict(transformer_layers_per_block=0), r"transformer_layers_per_block=0; accepted"),
        (dict(transformer_layers_per_block=True), r"transformer_layers_per_block=True; accepted"),
        (dict(attention_head_dim=3), "attention_head_dim=3"),
        (dict(norm_num_groups=24), "norm_num_groups=24"),
        (dict(addition_embed_type="text"), "addition_embed_type='text' is not supported"),
        (dict(addition_embed_type="text_time"), "'text_time' needs addition_time_embed_dim"),
        (dict(transformer_layers_per_block=(1, 2, 3)), r"transformer_layers_per_block=\(1, 2, 3"),
    ],
)
def test_bad_configuration_raises_user_error(overrides, match):
    with pytest.raises(UserError, match=match):
        eval_shape(lambda: UNet(**{**TINY, **overrides}, rngs=nnx.Rngs(0)))


SDXL_LIKE = dict(
    TINY,
    addition_embed_type="text_time",
    addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=32,
)


def _traced_call(config: dict, **added: tuple) -> None:
    """Traces a call of an abstract UNet of `config` with the `added` inputs of these shapes."""
    graphdef, state = nnx.split(eval_shape(lambda: UNet(**config, rngs=nnx.Rngs(0))))
    x, t, ctx = _inputs()
    given = {k: jax.ShapeDtypeStruct(shape, jnp.float32) for k, shape in added.items()}
    jax.eval_shape(lambda state, kw: nnx.merge(graphdef, state)(x, t, ctx, **kw), state, given)


@pytest.mark.parametrize(
    ("added", "match"),
    [
        ({}, "takes text_embeds and time_ids"),
        ({"text_embeds": (2, 9), "time_ids": (2, 6)}, "give 33 features; accepted: .* = 32"),
    ],
)
def test_sdxl_micro_conditioning_is_checked(added, match):
    with pytest.raises(UserError, match=match):
        _traced_call(SDXL_LIKE, **added)
    with pytest.raises(UserError, match="text_embeds / time_ids given to a UNet without"):
        _traced_call(TINY, text_embeds=(2, 8))


def test_spatial_size_must_divide_by_the_downsampling():
    unet = eval_shape(lambda: UNet(**TINY, rngs=nnx.Rngs(0)))
    x, t, ctx = _inputs(size=7)
    with pytest.raises(UserError, match="7x7; accepted: multiples of 2"):
        unet(x, t, ctx)


def test_shapes_preset_denoises_8x8x4_latents():
    latent, context = (2, 8, 8, 4), (2, 16, 128)
    unet = eval_shape(lambda: UNet(**UNET_PRESETS["shapes"], rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(unet)
    out = jax.eval_shape(
        lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c),
        state,
        jax.ShapeDtypeStruct(latent, jnp.float32),
        jax.ShapeDtypeStruct((), jnp.float32),
        jax.ShapeDtypeStruct(context, jnp.float32),
    )
    assert out.shape == latent


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("sd15", 859_520_964), ("sd2", 865_910_724), ("sdxl", 2_567_463_684)],
)
def test_stable_diffusion_presets_have_the_reference_parameter_count(
    preset, expected, count_params
):
    unet = eval_shape(lambda: UNet(**UNET_PRESETS[preset], rngs=nnx.Rngs(0)))
    assert count_params(unet) == expected
