"""The training step: a pure function of (state, ema, health, batch, root key, step) for jit.

The model and its optimizer travel as one ``nnx.State`` (from ``nnx.split((model, optimizer))``),
so the step compiles once with shardings and donation, and is checkpointed as plain pytrees.

- Every example draws its randomness from ``fold_in(fold_in(root_key, step), row)``, its row in
  the global batch: the result does not depend on how the batch is split over devices, hosts or
  micro-batches.
- Gradient accumulation: the batch is cut into ``micro_batches`` interleaved micro-batches (rows
  ``m, m + A, m + 2A, ...``, so each device keeps an equal share of each) and their gradients are
  summed in a ``lax.scan``; with equal micro-batches the mean loss and its gradient equal those of
  the whole batch.
- A non-finite loss, gradient or updated weight leaves the state unchanged and is counted in
  ``health``; with
  ``stop_on_nonfinite`` every later update is also withheld, so the state stays the last finite
  one while the host notices (it checks ``health`` when it logs or saves).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.train.ema import ema_update

LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict[str, jax.Array]]]
"""``loss_fn(model, batch) -> (losses [B], metrics {name: [B]})``; ``batch["key"]`` holds one
PRNG key per example."""


def initial_health() -> dict[str, jax.Array]:
    """Counters of the non-finite steps: how many, and the first one (-1: none)."""
    return {
        "nonfinite_steps": jnp.zeros((), jnp.int32),
        "first_nonfinite": -jnp.ones((), jnp.int32),
    }


def example_keys(root_key: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
    """One key per row of the global batch of ``step``: [B]."""
    step_key = jax.random.fold_in(root_key, step)
    return jax.vmap(lambda row: jax.random.fold_in(step_key, row))(jnp.arange(batch_size))


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    trainable: nnx.filterlib.Filter,
    ema_decay: Callable[[jax.Array], jax.Array],
    micro_batches: int = 1,
    stop_on_nonfinite: bool = True,
    batch_sharding: NamedSharding | None = None,
    unroll_micro_batches: bool = False,
) -> Callable:
    """Returns ``step(state, ema, health, batch, root_key, step) -> (state, ema, health, metrics)``.

    ``loss_fn`` is differentiated with respect to the ``trainable`` parameters only; frozen parts
    of the model (a pretrained autoencoder, say) are left untouched. ``ema`` is an ``nnx.State``
    of the trainable parameters, ``ema_decay(updates)`` its decay. ``batch_sharding`` (the
    batch's) keeps each micro-batch split over the same devices. ``unroll_micro_batches`` unrolls
    the scan into straight-line code: XLA's CPU backend runs loop bodies several times slower than
    the same code unrolled; on GPU and TPU a loop compiles faster and holds one micro-batch's
    activations at a time.
    """

    def gradients(model: nnx.Module, batch: dict):
        model_def, params, rest = nnx.split(model, trainable, ...)

        def mean_loss(params: nnx.State, micro: dict):
            losses, metrics = loss_fn(nnx.merge(model_def, params, rest), micro)
            metrics = {name: jnp.mean(value) for name, value in metrics.items()}
            return jnp.mean(losses), metrics

        grad_fn = jax.value_and_grad(mean_loss, has_aux=True)
        if micro_batches == 1:
            return grad_fn(params, batch)

        def split(a: jax.Array) -> jax.Array:  # [B, ...] -> [A, B / A, ...], interleaved rows
            a = a.reshape(a.shape[0] // micro_batches, micro_batches, *a.shape[1:])
            a = jnp.swapaxes(a, 0, 1)
            if batch_sharding is None:
                return a
            spec = P(None, *batch_sharding.spec)
            return jax.lax.with_sharding_constraint(a, NamedSharding(batch_sharding.mesh, spec))

        def accumulate(total: nnx.State, micro: dict):
            (loss, metrics), grads = grad_fn(params, micro)
            return jax.tree.map(jnp.add, total, grads), (loss, metrics)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        total, (losses, metrics) = jax.lax.scan(
            accumulate, zeros, jax.tree.map(split, batch), unroll=unroll_micro_batches
        )
        grads = jax.tree.map(lambda g, p: (g / micro_batches).astype(p.dtype), total, params)
        metrics = {name: jnp.mean(value) for name, value in metrics.items()}
        return (jnp.mean(losses), metrics), grads

    def step(state, ema, health, batch: dict, root_key: jax.Array, step: jax.Array):
        model, optimizer = nnx.merge(graphdef, state, copy=True)  # `state` stays the old one
        batch_size = jax.tree.leaves(batch)[0].shape[0]
        batch = {**batch, "key": example_keys(root_key, step, batch_size)}
        (loss, metrics), grads = gradients(model, batch)
        grad_norm = optax.global_norm(grads)
        optimizer.update(model, grads)
        new_params = nnx.state(model, trainable)
        finite = (
            jnp.isfinite(loss)
            & jnp.isfinite(grad_norm)
            & jnp.isfinite(optax.global_norm(new_params))
        )
        apply = finite & (health["first_nonfinite"] < 0) if stop_on_nonfinite else finite
        new_ema = ema_update(ema, new_params, ema_decay(optimizer.step[...]))
        new_state = nnx.state((model, optimizer))
        # One branch for the whole state (a select per array would be hundreds of kernels).
        state, ema = jax.lax.cond(apply, lambda: (new_state, new_ema), lambda: (state, ema))
        health = {
            "nonfinite_steps": health["nonfinite_steps"] + (~finite).astype(jnp.int32),
            "first_nonfinite": jnp.where(
                (health["first_nonfinite"] < 0) & ~finite, step, health["first_nonfinite"]
            ).astype(jnp.int32),
        }
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm}
        return state, ema, health, metrics

    return step
