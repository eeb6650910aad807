"""The training step: a pure function of (state, ema, batch, key), ready for ``jax.jit``.

The model and its optimizer travel as one ``nnx.State`` (from ``nnx.split((model, optimizer))``),
so the step can be compiled once with shardings and donation, and checkpointed as plain pytrees.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax
from flax import nnx

from jaxdiff.train.ema import ema_decay, ema_update

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    trainable: nnx.filterlib.Filter,
    ema_rate: float,
    ema_warmup: bool = True,
) -> Callable:
    """Returns ``step(state, ema, batch, key) -> (state, ema, metrics)``.

    ``loss_fn(model, batch, key) -> (loss, metrics)`` is differentiated with respect to the
    ``trainable`` parameters only; frozen parts of the model (a pretrained autoencoder, say) are
    left untouched. ``ema`` is an ``nnx.State`` of the trainable parameters.
    """

    def step(state: nnx.State, ema: nnx.State, batch: dict, key: jax.Array):
        model, optimizer = nnx.merge(graphdef, state)
        grad_fn = nnx.value_and_grad(
            lambda m: loss_fn(m, batch, key), argnums=nnx.DiffState(0, trainable), has_aux=True
        )
        (loss, metrics), grads = grad_fn(model)
        optimizer.update(model, grads)
        decay = ema_decay(optimizer.step[...], ema_rate, ema_warmup)
        ema = ema_update(ema, nnx.state(model, trainable), decay)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        return nnx.state((model, optimizer)), ema, metrics

    return step
