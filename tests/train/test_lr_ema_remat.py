"""Learning-rate schedules, EMA decays and per-block rematerialization."""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.extend.core import Jaxpr, jaxprs_in_params
from tiny_finetune import finetune_config

from configs import common
from jaxdiff.configuration import load_config
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.unet import UNET_PRESETS, UNet
from jaxdiff.train.ema import make_ema_decay
from jaxdiff.train.optim import learning_rate_schedule
from jaxdiff.train.tasks import make_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ONE_LEVEL = {
    **UNET_PRESETS["tiny"],
    "block_out_channels": (16,),
    "down_block_types": ("CrossAttnDownBlock2D",),
    "up_block_types": ("CrossAttnUpBlock2D",),
}
# The primitive `jax.checkpoint` binds (its name differs between JAX versions).
REMAT = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive


def train_config(**overrides) -> ml_collections.ConfigDict:
    config = common.training(steps=100, batch_size=8, learning_rate=1.0)
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


def _remat_calls(jaxpr: Jaxpr) -> int:
    """How many `jax.checkpoint` calls `jaxpr` makes, in nested jaxprs too."""
    return sum(
        (eqn.primitive == REMAT) + sum(_remat_calls(sub) for sub in jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def _gradient_remat_calls(unet: UNet) -> int:
    """The `jax.checkpoint` calls in the program of a loss gradient of `unet` (traced on abstract
    inputs only: nothing is compiled or run)."""
    arguments = dict(unet.architecture)
    width = arguments["cross_attention_dim"]
    x = jax.ShapeDtypeStruct((2, 8, 8, arguments["in_channels"]), jnp.float32)  # [B, H, W, C]
    context = jax.ShapeDtypeStruct((2, 3, width), jnp.float32)  # [B, T, D]
    graphdef, params = nnx.split(unet)

    def loss(params, x, context):
        return jnp.mean(nnx.merge(graphdef, params)(x, jnp.array([3.0, 500.0]), context) ** 2)

    return _remat_calls(jax.make_jaxpr(jax.grad(loss))(params, x, context).jaxpr)


def _blocks(unet: UNet) -> int:
    return len(unet.down_blocks) + 1 + len(unet.up_blocks)  # down, mid, up


def test_remat_checkpoints_every_block_of_the_gradient():
    """`remat=True` puts each down / mid / up block in a `jax.checkpoint` (its activations are
    recomputed in the backward pass); `remat=False` puts none."""
    on, off = (
        eval_shape(lambda r=remat: UNet(**ONE_LEVEL, remat=r, rngs=nnx.Rngs(0)))
        for remat in (True, False)
    )
    assert _gradient_remat_calls(on) == _blocks(on) == 3
    assert _gradient_remat_calls(off) == 0


def _shapes_t2i(tmp_path: Path) -> ml_collections.ConfigDict:
    """The tiny text-to-image config (`tmp_path` unused: the signature of `finetune_config`)."""
    return load_config(f"{CONFIGS / 'shapes_t2i.py'}:tiny")


@pytest.mark.parametrize(
    "make_config",
    [
        pytest.param(_shapes_t2i, id="t2i"),
        pytest.param(finetune_config, id="finetune"),
    ],
)
def test_train_remat_reaches_the_unet(make_config, tmp_path):
    """`train.remat=True` in a task's config rematerializes every block of its UNet's gradient
    (without it the UNet's default, no remat, is checked above)."""
    config = make_config(tmp_path)
    config.train.remat = True
    task = make_task(config, tmp_path / "run")
    unet = eval_shape(lambda: task.build_model(nnx.Rngs(0))).unet
    assert _gradient_remat_calls(unet) == _blocks(unet)


def test_remat_gives_the_same_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    context = jax.random.normal(jax.random.key(1), (2, 3, 32))
    (graphdef_on, state), (graphdef_off, _) = (
        nnx.split(eval_shape(lambda r=remat: UNet(**ONE_LEVEL, remat=r, rngs=nnx.Rngs(0))))
        for remat in (True, False)
    )
    rng = np.random.RandomState(0)  # numpy weights: no initializer is compiled
    weights = jax.tree.map(lambda a: (0.1 * rng.randn(*a.shape)).astype(a.dtype), state)

    def grads(graphdef: nnx.GraphDef) -> list[jax.Array]:
        def loss(state):
            return jnp.mean(nnx.merge(graphdef, state)(x, jnp.array([3.0, 500.0]), context) ** 2)

        return jax.tree.leaves(jax.jit(jax.grad(loss))(weights))

    for a, b in zip(grads(graphdef_on), grads(graphdef_off), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
