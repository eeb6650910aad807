"""Exponential moving average of the trainable weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ema_decay(step: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
    """The decay used at ``step``: ``min(decay, (1 + step) / (10 + step))`` with warmup, so early
    averages are not dominated by the random initialisation (the schedule of Tensorflow's
    ``ExponentialMovingAverage`` with ``num_updates``)."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if warmup else jnp.asarray(decay)


def ema_update(ema, params, decay: jax.Array):
    """``ema <- decay * ema + (1 - decay) * params``, leaf by leaf, in the EMA's dtype."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p.astype(e.dtype) - e), ema, params)
