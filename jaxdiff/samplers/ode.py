"""Euler and Heun samplers for the probability-flow ODE `dx/dsigma = (x - D(x, sigma)) / sigma`
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2), with its optional stochastic "churn", and Heun's method on the same ODE in flow
time (`flow_heun`).

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
from jaxdiff.samplers.base import Denoise, noise_direction, register


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
    """Karras et al. 2022, Algorithm 2, lines 4-6: `(x_hat, sigma_hat)`; identity without a key.
    At sigma = inf the state is `x / sigma`, so the added noise is divided by `1 + gamma_i`."""
    if key is None:
        return x, sigma
    gamma_i = jnp.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma, 0.0)
    sigma_hat = sigma * (1.0 + gamma_i)
    eps = jax.random.normal(key, x.shape, x.dtype) * s_noise
    # sqrt(sigma_hat^2 - sigma^2), written so that gamma_i = 0 gives exactly 0: the difference
    # of squares can round (or be fused) to a tiny negative number and give NaN.
    raise_by = jnp.sqrt(gamma_i * (2.0 + gamma_i))
    at_infinity = (x + eps * raise_by) / (1.0 + gamma_i)
    return jnp.where(jnp.isinf(sigma), at_infinity, x + eps * (sigma * raise_by)), sigma_hat


def euler_step(
    x: jax.Array, denoised: jax.Array, sigma: jax.Array, sigma_to: jax.Array
) -> jax.Array:
    """Euler's step of the PF-ODE from sigma to sigma_to, `x + (x - D) / sigma * (sigma_to -
    sigma)` (k-diffusion's form), and at sigma = inf its limit `D + sigma_to * eps`. [B, ...]"""
    d = noise_direction(x, denoised, sigma)  # [B, ...]
    return jnp.where(jnp.isinf(sigma), denoised + sigma_to * d, x + d * (sigma_to - sigma))


@register("euler", starts_at_infinity=True)
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
    only (k-diffusion `sample_euler`). It is also the flow's Euler step in t, so from
    `sigmas[0] = inf` it is diffusers' `FlowMatchEulerDiscreteScheduler`.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step."""
    n = sigmas.shape[0] - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    keys = _step_keys("euler", key, s_churn, n)

    def step(x: jax.Array, inp: tuple) -> tuple[jax.Array, None]:
        sigma, sigma_next, k = inp
        x, sigma_hat = _churn(x, sigma, k, gamma, s_tmin, s_tmax, s_noise)
        return euler_step(x, denoise(x, sigma_hat), sigma_hat, sigma_next), None

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


def _flow_time(sigma: jax.Array) -> jax.Array:
    """The flow time `t = sigma / (1 + sigma)`, 1 at sigma = inf."""
    return jnp.where(jnp.isinf(sigma), 1.0, sigma / (1.0 + sigma))


def _flow_scale(sigma: jax.Array) -> jax.Array:
    """`1 + sigma`, the factor from the flow state `x_t` to `x`; 1 at sigma = inf, where the
    state is already `x_t` (the unit noise)."""
    return jnp.where(jnp.isinf(sigma), 1.0, 1.0 + sigma)


@register("flow_heun", evals_per_step=2, starts_at_infinity=True)
def flow_heun(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """Heun's method on the PF-ODE written in flow time: `t = sigma / (1 + sigma)`,
    `x_t = x / (1 + sigma)`, `dx_t / dt = eps_hat - D` (the velocity; the same ODE as `heun`
    integrates, discretised in t instead of sigma, so the two differ at second order). Equal to
    diffusers' `FlowMatchHeunDiscreteScheduler` on its grid, and finite from t = 1
    (`sigmas[0] = inf`). A step to sigma = 0 is an Euler step, as in `heun`. Deterministic; `key`
    is unused. x: [B, ...]; sigmas: [n + 1] descending. Two denoiser calls per step (one into
    sigma = 0)."""

    def velocity(x_t: jax.Array, sigma: jax.Array) -> jax.Array:
        x = x_t * _flow_scale(sigma)
        denoised = denoise(x, sigma)
        return noise_direction(x, denoised, sigma) - denoised  # [B, ...]

    def step(x_t: jax.Array, inp: tuple) -> tuple[jax.Array, None]:
        sigma, sigma_next = inp
        dt = _flow_time(sigma_next) - _flow_time(sigma)
        v = velocity(x_t, sigma)
        x_euler = x_t + dt * v

        def correct() -> jax.Array:
            return x_t + 0.5 * dt * (v + velocity(x_euler, sigma_next))

        return jax.lax.cond(sigma_next > 0, correct, lambda: x_euler), None

    x_t, _ = jax.lax.scan(step, x / _flow_scale(sigmas[0]), (sigmas[:-1], sigmas[1:]))
    return x_t * _flow_scale(sigmas[-1])
