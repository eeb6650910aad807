"""Exponential moving average of the trainable weights."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections


def make_ema_decay(train: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """The EMA decay as a function of the number of updates applied, this one included.

    - ``ema_half_life_images > 0``: the average's half-life in training images (Karras et al.
      2022, EDM: ``decay = 0.5 ** (batch_size / half_life)``), ramped up as
      ``half_life = min(half_life, images_seen * ema_rampup)`` when ``ema_rampup > 0``.
    - otherwise ``ema_rate``, with ``ema_warmup``: ``min(ema_rate, (1 + n) / (10 + n))``, so early
      averages are not dominated by the random initialisation (Tensorflow's
      ``ExponentialMovingAverage`` with ``num_updates``).
    """
    batch = float(train.batch_size)
    half_life = float(train.ema_half_life_images)
    rampup = float(train.ema_rampup)
    rate, warmup = float(train.ema_rate), bool(train.ema_warmup)

    def decay(updates: jax.Array) -> jax.Array:
        n = jnp.asarray(updates, jnp.float32)
        if half_life > 0:
            life = jnp.minimum(half_life, n * batch * rampup) if rampup > 0 else half_life
            return 0.5 ** (batch / jnp.maximum(life, 1e-8))
        return jnp.minimum(rate, (1.0 + n) / (10.0 + n)) if warmup else jnp.asarray(rate)

    return decay


def ema_update(ema, params, decay: jax.Array):
    """``ema <- decay * ema + (1 - decay) * params``, leaf by leaf, in the EMA's dtype."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p.astype(e.dtype) - e), ema, params)
