"""Learning-rate schedules, EMA decays and per-block rematerialization."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import common
from jaxdiff.models.unet import UNET_PRESETS, UNet
from jaxdiff.train.ema import make_ema_decay
from jaxdiff.train.optim import learning_rate_schedule


def train_config(**overrides) -> ml_collections.ConfigDict:
    config = common.train(steps=100, batch_size=8, learning_rate=1.0)
    config.update(warmup_steps=10, final_lr_fraction=0.1, **overrides)
    return config


@pytest.mark.parametrize(
    "name, middle", [("cosine", 0.1 + 0.9 * 0.5), ("linear", 0.55), ("constant", 1.0)]
)
def test_learning_rate_schedules(name, middle):
    lr = learning_rate_schedule(train_config(lr_schedule=name))
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(lr(55), middle, rtol=1e-5)  # half-way through the decay
    np.testing.assert_allclose(lr(100), 1.0 if name == "constant" else 0.1, rtol=1e-5)


def test_ema_rate_with_warmup():
    decay = make_ema_decay(train_config(ema_rate=0.999))
    np.testing.assert_allclose(decay(1), 2 / 11, rtol=1e-6)
    np.testing.assert_allclose(decay(100_000), 0.999, rtol=1e-6)
    plain = make_ema_decay(train_config(ema_rate=0.99, ema_warmup=False))
    np.testing.assert_allclose(plain(1), 0.99, rtol=1e-6)


def test_ema_half_life_in_images():
    """After half_life images (half_life / batch updates) an old weight counts one half."""
    decay = make_ema_decay(train_config(ema_half_life_images=800.0))
    np.testing.assert_allclose(float(decay(5)) ** (800 / 8), 0.5, rtol=1e-5)
    ramped = make_ema_decay(train_config(ema_half_life_images=800.0, ema_rampup=0.05))
    # 10 updates = 80 images: half-life min(800, 80 * 0.05) = 4 images, half a batch
    np.testing.assert_allclose(float(ramped(10)), 0.5 ** (8 / 4), rtol=1e-5)
    np.testing.assert_allclose(float(ramped(10_000)), float(decay(10_000)), rtol=1e-6)


def test_remat_gives_the_same_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    context = jax.random.normal(jax.random.key(1), (2, 3, 32))

    one_level = {
        **UNET_PRESETS["tiny"],
        "block_out_channels": (16,),
        "down_block_types": ("CrossAttnDownBlock2D",),
        "up_block_types": ("CrossAttnUpBlock2D",),
    }

    def grads(remat: bool):
        unet = UNet(**one_level, remat=remat, rngs=nnx.Rngs(0))
        loss = lambda m: jnp.mean(m(x, jnp.array([3.0, 500.0]), context) ** 2)  # noqa: E731
        return jax.tree.leaves(nnx.grad(loss)(unet))

    for a, b in zip(grads(True), grads(False), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
