"""Noise sources for stochastic samplers.

A noise source `noise(sigma, sigma_next) -> eps [x.shape]` gives the standard-normal noise a
sampler adds over the interval from `sigma` down to `sigma_next`. It is a pure function of the
interval, so samplers call it inside `lax.scan` without threading keys.

- "independent": a fresh normal per interval, keyed by the interval's endpoints (k-diffusion's
  default noise sampler). Fast; a different step count sees unrelated noise.
- "brownian": the normalised increment `(W(sigma) - W(sigma_next)) / sqrt(sigma - sigma_next)` of
  one Brownian path W on `[0, sigma_max]`, fixed by the key (k-diffusion's
  `BrownianTreeNoiseSampler`, Li et al. 2020, "Scalable Gradients for Stochastic Differential
  Equations", virtual Brownian tree). Every step count draws increments of the same path, so a
  stochastic sampler converges to one SDE solution as the steps grow. The path lives on
  `[0, sigmas[0]]`, so runs share it when their schedules start at the same sigma (karras,
  exponential, "trailing" spacing do; "leading" spacing starts lower as the steps grow).

The tree: `W(0) = 0`, `W(sigma_max) ~ N(0, sigma_max)`, and each bisection draws the midpoint
from the Brownian bridge, `W(m) | W(a), W(b) ~ N((W(a) + W(b)) / 2, (b - a) / 4)`, with a key fixed
by the node's heap index. `W(t)` descends `depth` levels towards t and interpolates linearly in
the last interval (width `sigma_max / 2^depth`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError, check_choice

# noise(sigma [], sigma_next []) -> eps [*shape], standard normal
NoiseSource = Callable[[jax.Array, jax.Array], jax.Array]

NOISE_KINDS = ("independent", "brownian")
BROWNIAN_DEPTH = 24


def _float_bits(v: jax.Array) -> jax.Array:
    """The bits of `v` as float32, as a uint32 to fold into a key."""
    return jax.lax.bitcast_convert_type(jnp.asarray(v, jnp.float32), jnp.uint32)


def independent_noise(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> NoiseSource:
    """A fresh standard normal per interval, keyed by the interval's endpoints."""

    def noise(sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
        k = jax.random.fold_in(jax.random.fold_in(key, _float_bits(sigma)), _float_bits(sigma_next))
        return jax.random.normal(k, shape, dtype)

    return noise


def brownian_value(
    key: jax.Array,
    t: jax.Array,
    t_max: float | jax.Array,
    shape: tuple[int, ...],
    dtype: jnp.dtype,
    depth: int = BROWNIAN_DEPTH,
) -> jax.Array:
    """`W(t)` for t in `[0, t_max]` of the Brownian path fixed by `key` (see the module
    docstring). [*shape]"""
    t = jnp.asarray(t, dtype)
    t_max = jnp.asarray(t_max, dtype)
    w_max = jnp.sqrt(t_max) * jax.random.normal(jax.random.fold_in(key, 0), shape, dtype)

    def bisect(_: int, carry: tuple) -> tuple:
        a, b, w_a, w_b, node = carry
        m = 0.5 * (a + b)
        bridge = jax.random.normal(jax.random.fold_in(key, node), shape, dtype)
        w_m = 0.5 * (w_a + w_b) + 0.5 * jnp.sqrt(b - a) * bridge
        left = t < m
        return (
            jnp.where(left, a, m),
            jnp.where(left, m, b),
            jnp.where(left, w_a, w_m),
            jnp.where(left, w_m, w_b),
            2 * node + jnp.where(left, 0, 1).astype(jnp.uint32),
        )

    zero = jnp.zeros((), dtype)
    start = (zero, t_max, jnp.zeros(shape, dtype), w_max, jnp.uint32(1))
    a, b, w_a, w_b, _ = jax.lax.fori_loop(0, depth, bisect, start)
    # In float32 the interval can shrink below the spacing of floats near t (b == a).
    width = b - a
    frac = jnp.clip((t - a) / jnp.where(width > 0, width, 1.0), 0.0, 1.0)
    return w_a + frac * (w_b - w_a)


def brownian_noise(
    key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype, sigma_max: jax.Array
) -> NoiseSource:
    """Normalised increments of one Brownian path on `[0, sigma_max]`."""

    def noise(sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
        w = brownian_value(key, sigma, sigma_max, shape, dtype)
        w_next = brownian_value(key, sigma_next, sigma_max, shape, dtype)
        return (w - w_next) / jnp.sqrt(sigma - sigma_next)

    return noise


def make_noise(
    sampler: str, kind: str, key: jax.Array | None, x: jax.Array, sigmas: jax.Array
) -> NoiseSource:
    """The noise source `kind` for a stochastic `sampler` run from `x` along `sigmas`.

    Raises `UserError` for an unknown kind or a missing key."""
    check_choice(f"sampler {sampler!r}: noise", kind, NOISE_KINDS)
    if key is None:
        raise UserError(f"sampler {sampler!r} adds noise and needs a key")
    if kind == "independent":
        return independent_noise(key, x.shape, x.dtype)
    return brownian_noise(key, x.shape, x.dtype, sigmas[0])


def stochastic_noise(
    sampler: str,
    eta: float,
    kind: str,
    key: jax.Array | None,
    x: jax.Array,
    sigmas: jax.Array,
) -> NoiseSource | None:
    """The noise source of a stochastic sampler with noise amount `eta`, or None when `eta = 0`
    adds no noise (then no key is needed). Raises `UserError` for `eta < 0`, an unknown kind or
    a missing key."""
    if not eta >= 0:
        raise UserError(f"sampler {sampler!r}: eta={eta} must be >= 0")
    if eta == 0:
        check_choice(f"sampler {sampler!r}: noise", kind, NOISE_KINDS)
        return None
    return make_noise(sampler, kind, key, x, sigmas)
