"""Distances between a set of generated samples and the data, for low-dimensional benchmarks.

- `coupled_rmse`: root-mean-square distance to a reference solution from the same initial noise;
  with an exact reference it is the sampler's discretization error alone.
- `sliced_wasserstein`: sliced Wasserstein-2 distance (Rabin et al. 2011; Bonneel et al. 2015),
  the root of the mean over random directions of the squared 1-D W2 between the projected sample
  sets, each 1-D W2 computed from sorted projections. Needs equal sample counts.
- `mmd`: unbiased squared maximum mean discrepancy (Gretton et al. 2012, eq. 3) with a Gaussian
  kernel of a given bandwidth.
- `mode_weight_tv`: total-variation distance between the mixture weights and the samples' mean
  responsibilities. For exact samples `E[r_k(x)] = w_k` at any noise level, so the estimate is
  unbiased.

Two independent sets of exact samples give each distance's noise floor at that sample count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.benchmarks.mixtures import GaussianMixture


def coupled_rmse(x: jax.Array, reference: jax.Array) -> jax.Array:
    """`sqrt(mean((x - reference)^2))` over all entries. x, reference: [N, d] -> []"""
    return jnp.sqrt(jnp.mean((x - reference) ** 2))


def sliced_wasserstein(
    key: jax.Array, a: jax.Array, b: jax.Array, projections: int = 256
) -> jax.Array:
    """Sliced Wasserstein-2 distance between sample sets a, b: [N, d] (same N) -> []"""
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equal shapes, got {a.shape} and {b.shape}")
    directions = jax.random.normal(key, (a.shape[1], projections), a.dtype)  # [d, P]
    directions = directions / jnp.linalg.norm(directions, axis=0, keepdims=True)
    pa = jnp.sort(a @ directions, axis=0)  # [N, P]
    pb = jnp.sort(b @ directions, axis=0)
    return jnp.sqrt(jnp.mean((pa - pb) ** 2))


def _kernel_mean(a: jax.Array, b: jax.Array, bandwidth: float, drop_diagonal: bool) -> jax.Array:
    sq = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T  # [N, M]
    k = jnp.exp(-jnp.maximum(sq, 0.0) / (2.0 * bandwidth**2))
    if not drop_diagonal:
        return jnp.mean(k)
    n = a.shape[0]
    return (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))


def mmd(a: jax.Array, b: jax.Array, bandwidth: float) -> jax.Array:
    """Unbiased MMD^2 with kernel `exp(-|x - y|^2 / (2 bandwidth^2))`. a: [N, d], b: [M, d] -> []
    (can be slightly negative for equal distributions)."""
    return (
        _kernel_mean(a, a, bandwidth, True)
        + _kernel_mean(b, b, bandwidth, True)
        - 2.0 * _kernel_mean(a, b, bandwidth, False)
    )


def mode_weight_tv(mixture: GaussianMixture, x: jax.Array, sigma: float = 0.0) -> jax.Array:
    """`0.5 * sum_k |mean_n r_k(x_n, sigma) - w_k|` for samples at noise level sigma.
    x: [N, d] -> []"""
    r = mixture.responsibilities(x, sigma)  # [N, K]
    return 0.5 * jnp.sum(jnp.abs(jnp.mean(r, 0) - mixture.weights))
