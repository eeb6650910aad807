"""The ControlNet: a copy of a UNet starts by changing nothing, gradients reach every parameter,
errors (its parity with diffusers: tests/convert/test_convert_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models import UNET_PRESETS, ControlNet, UNet
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.controlnet import check_steers

TINY = UNET_PRESETS["tiny"]
EMBEDDING = (8, 16)  # conditioning image at twice the latents' size


def _inputs(seed=0):
    rng = np.random.RandomState(seed)
    x = jnp.asarray(rng.randn(2, 8, 8, 4), jnp.float32)  # [B, h, w, C]
    t = jnp.asarray([10.0, 700.0])  # [B]
    ctx = jnp.asarray(rng.randn(2, 5, 32), jnp.float32)  # [B, T, D]
    cond = jnp.asarray(rng.rand(2, 16, 16, 3), jnp.float32)  # [B, H, W, 3]
    return x, t, ctx, cond


@pytest.fixture(scope="module")
def copied(random_model):
    """(unet with random weights, a ControlNet copied from it)."""
    unet = random_model(lambda: UNet(**TINY, rngs=nnx.Rngs(0)))
    controlnet = ControlNet.from_unet(
        unet, conditioning_embedding_out_channels=EMBEDDING, rngs=nnx.Rngs(1)
    )
    return unet, controlnet


def test_a_copy_of_the_unet_leaves_its_output_as_it_is(copied):
    unet, controlnet = copied
    x, t, ctx, cond = _inputs()
    graphdef, state = nnx.split((unet, controlnet))

    @jax.jit
    def outputs(state):
        unet, controlnet = nnx.merge(graphdef, state)
        residuals = controlnet(x, t, ctx, cond)
        return unet(x, t, ctx), unet(x, t, ctx, *residuals), residuals

    plain, steered, (down, mid) = outputs(state)
    assert len(down) == 1 + 2 * len(TINY["block_out_channels"]) - 1
    assert all(not np.any(np.asarray(r)) for r in [*down, mid])
    np.testing.assert_array_equal(np.asarray(steered), np.asarray(plain))
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        same = jax.tree.map(
            np.array_equal, nnx.state(getattr(unet, name)), nnx.state(getattr(controlnet, name))
        )
        assert all(jax.tree.leaves(same)), name


def test_gradients_reach_every_controlnet_parameter(copied):
    """From the zero convolutions' start the loss still has a gradient for each of them, and
    once they are nonzero, for every parameter behind them."""
    unet, controlnet = copied
    x, t, ctx, cond = _inputs()
    graphdef, params = nnx.split(controlnet)
    params = jax.tree.map(lambda p: p + 0.05, params)  # zero convolutions off zero

    @jax.jit
    def grads(params):
        def loss(params):
            down, mid = nnx.merge(graphdef, params)(x, t, ctx, cond)
            return jnp.mean(unet(x, t, ctx, down, mid) ** 2)

        return jax.grad(loss)(params)

    leaves = jax.tree.leaves(grads(params))
    assert len(leaves) == len(jax.tree.leaves(params))
    assert all(np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0 for g in leaves)


def test_conditioning_image_of_the_wrong_size(copied):
    _, controlnet = copied
    x, t, ctx, cond = _inputs()
    with pytest.raises(UserError, match=r"\(2, 8, 8, 3\); accepted: \(2, 16, 16\)"):
        controlnet(x, t, ctx, cond[:, ::2, ::2])


def test_residual_count_must_fit_the_unet(copied):
    unet, _ = copied
    x, t, ctx, _ = _inputs()
    with pytest.raises(UserError, match="2 down-block residuals; accepted: one per skip"):
        unet(x, t, ctx, [x, x])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(controlnet_conditioning_channel_order="rbg"), "'rbg'; accepted: rgb, bgr"),
        (dict(conditioning_embedding_out_channels=()), "is empty"),
        (dict(down_block_types=("DownBlock2D",)), "down_block_types has 1 entries"),
    ],
)
def test_bad_configuration(overrides, match):
    arguments = {k: v for k, v in TINY.items() if k not in ("out_channels", "up_block_types")}
    with pytest.raises(UserError, match=match):
        eval_shape(lambda: ControlNet(**{**arguments, **overrides}, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(cross_attention_dim=48), "cross_attention_dim=48, the UNet needs 32"),
        (dict(block_out_channels=(32, 32)), r"block_out_channels=\(32, 32\), the UNet needs"),
        (dict(in_channels=9), "in_channels=9, the UNet needs 4"),
    ],
)
def test_a_controlnet_for_another_unet(overrides, match):
    unet = eval_shape(lambda: UNet(**TINY, rngs=nnx.Rngs(0)))
    arguments = {k: v for k, v in TINY.items() if k not in ("out_channels", "up_block_types")}
    other = eval_shape(lambda: ControlNet(**{**arguments, **overrides}, rngs=nnx.Rngs(0)))
    with pytest.raises(UserError, match=match):
        check_steers(other, unet)
