"""Euler and Heun samplers for the probability-flow ODE `dx/dsigma = (x - D(x, sigma)) / sigma`
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2), with its optional stochastic "churn".

Churn: before a step from `sigma_i`, if `s_tmin <= sigma_i <= s_tmax`, noise is raised to
`sigma_hat = sigma_i * (1 + gamma)` with `gamma = min(s_churn / n, sqrt(2) - 1)` by adding fresh
noise of standard deviation `s_noise * sqrt(sigma_hat^2 - sigma_i^2)`; n is the number of steps.
With `s_churn = 0` (the default) the samplers are deterministic and need no key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.samplers.base import Denoise, register


def _step_keys(name: str, key: jax.Array | None, s_churn: float, n: int) -> jax.Array | None:
    """One key per step [n] when churn adds noise, else None. Checks the churn settings."""
    if s_churn < 0:
        raise UserError(f"sampler {name!r}: s_churn={s_churn} must be >= 0")
    if s_churn == 0:
        return None
    if key is None:
        raise UserError(f"sampler {name!r} with s_churn={s_churn} > 0 needs a key")
    return jax.random.split(key, n)


def _churn(
    x: jax.Array,
    sigma: jax.Array,
    key: jax.Array | None,
    gamma: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[jax.Array, jax.Array]:
    """Karras et al. 2022, Algorithm 2, lines 4-6: `(x_hat, sigma_hat)`; identity without a key."""
    if key is None:
        return x, sigma
    gamma_i = jnp.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma, 0.0)
    sigma_hat = sigma * (1.0 + gamma_i)
    eps = jax.random.normal(key, x.shape, x.dtype) * s_noise
    # sqrt(sigma_hat^2 - sigma^2), written so that gamma_i = 0 gives exactly 0: the difference
    # of squares can round (or be fused) to a tiny negative number and give NaN.
    return x + eps * (sigma * jnp.sqrt(gamma_i * (2.0 + gamma_i))), sigma_hat


@register("euler")
def euler(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> jax.Array:
    """Euler's method on the PF-ODE: Karras et al. 2022, Algorithm 2 with the first-order step
    only (k-diffusion `sample_euler`). x: [B, ...]; sigmas: [n + 1] descending. One denoiser call
    per step."""
    n = sigmas.shape[0] - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    keys = _step_keys("euler", key, s_churn, n)

    def step(x: jax.Array, inp: tuple) -> tuple[jax.Array, None]:
        sigma, sigma_next, k = inp
        x, sigma_hat = _churn(x, sigma, k, gamma, s_tmin, s_tmax, s_noise)
        d = (x - denoise(x, sigma_hat)) / sigma_hat  # [B, ...]
        return x + d * (sigma_next - sigma_hat), None

    x, _ = jax.lax.scan(step, x, (sigmas[:-1], sigmas[1:], keys))
    return x


@register("heun", evals_per_step=2)
def heun(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> jax.Array:
    """Heun's second-order method on the PF-ODE: Karras et al. 2022, Algorithm 2.

    x: [B, ...]; sigmas: [n + 1] descending. Two denoiser calls per step, except that a step to
    sigma = 0 is a plain Euler step, as in Algorithm 2 (the correction would divide by 0), so the
    final step of a schedule ending in 0 is first order.
    """
    n = sigmas.shape[0] - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    keys = _step_keys("heun", key, s_churn, n)

    def step(x: jax.Array, inp: tuple) -> tuple[jax.Array, None]:
        sigma, sigma_next, k = inp
        x, sigma_hat = _churn(x, sigma, k, gamma, s_tmin, s_tmax, s_noise)
        d = (x - denoise(x, sigma_hat)) / sigma_hat  # [B, ...]
        dt = sigma_next - sigma_hat
        x_euler = x + d * dt

        def correct() -> jax.Array:
            d_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
            return x + 0.5 * (d + d_next) * dt

        return jax.lax.cond(sigma_next > 0, correct, lambda: x_euler), None

    x, _ = jax.lax.scan(step, x, (sigmas[:-1], sigmas[1:], keys))
    return x
