"""Stochastic DPM-Solver++ samplers, in sigma space: the SDE variants of the multistep
DPM-Solver++ (k-diffusion `sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde`; diffusers
`DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`) and the two-stage DPM-Solver++
steps with ancestral noise (k-diffusion `sample_dpmpp_2s_ancestral`, `sample_dpmpp_sde`).

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(arXiv 2211.01095); see `dpm_solver` for the notation. The noise comes from
`jaxdiff.samplers.noise.make_noise`; with `eta = 0` every sampler here is deterministic and needs
no key. The default `noise="independent"` draws a fresh normal per interval; k-diffusion's
`sample_dpmpp_sde`, `sample_dpmpp_2m_sde` and `sample_dpmpp_3m_sde` default to its Brownian-tree
noise sampler, which is `noise="brownian"` here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.samplers.ancestral import ancestral_sample, ancestral_step
from jaxdiff.samplers.base import Denoise, register
from jaxdiff.samplers.dpm_solver import dpmpp_multistep, positive_or_half
from jaxdiff.samplers.noise import stochastic_noise


@register("dpmpp_2m_sde", starts_at_infinity=True)
def dpmpp_2m_sde(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "independent",
    solver_type: str = "midpoint",
    lower_order_final: bool = False,
) -> jax.Array:
    """DPM-Solver++(2M) SDE. By default k-diffusion `sample_dpmpp_2m_sde` (its `solver_type`
    "midpoint" or "heun" too); `lower_order_final=True` with `eta = 1` is diffusers'
    `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)`, whose last
    step is first order below 15 steps (the two differ only on schedules that end above
    sigma = 0). `eta = 0` is `dpmpp_2m` with the same options. One denoiser call per step; see
    "Multistep" in `dpm_solver`. x: [B, ...]; sigmas: [n + 1]."""
    return dpmpp_multistep(
        "dpmpp_2m_sde",
        denoise,
        x,
        sigmas,
        order=2,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        eta=eta,
        s_noise=s_noise,
        noise_fn=stochastic_noise("dpmpp_2m_sde", eta, noise, key, x, sigmas),
    )


@register("dpmpp_3m_sde", starts_at_infinity=True)
def dpmpp_3m_sde(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "independent",
    solver_type: str = "heun",
    lower_order_final: bool = False,
) -> jax.Array:
    """DPM-Solver++(3M) SDE. By default k-diffusion `sample_dpmpp_3m_sde`: its second-order
    warm-up step weights the first difference by `phi_2` ("heun") and every step but the one
    into sigma = 0 takes the highest order available. `solver_type="midpoint",
    lower_order_final=True` are diffusers' `DPMSolverMultistepScheduler(
    algorithm_type="sde-dpmsolver++", solver_order=3)` defaults (`phi_1 / 2`, and first- and
    second-order last steps below 15 steps); diffusers also weights the third-order term by
    `-(phi_3(2h) + 1)` where the exponential integrator has `-phi_3(2h)`, which no option
    reproduces. `eta = 0` is `dpmpp_3m` with the same options. One denoiser call per step; see
    "Multistep" in `dpm_solver`. x: [B, ...]; sigmas: [n + 1]."""
    return dpmpp_multistep(
        "dpmpp_3m_sde",
        denoise,
        x,
        sigmas,
        order=3,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        eta=eta,
        s_noise=s_noise,
        noise_fn=stochastic_noise("dpmpp_3m_sde", eta, noise, key, x, sigmas),
    )


# ---------------------------------------------------------------------------------------------
# Two-stage DPM-Solver++ steps with ancestral noise


def _to(x: jax.Array, d: jax.Array, sigma: jax.Array, sigma_to: jax.Array) -> jax.Array:
    """First-order DPM-Solver++ (DDIM / Euler) step from sigma to sigma_to with denoised d; from
    sigma = inf, where the state is the unit noise, its limit `d + sigma_to x`, or, to a level
    that is infinite too (a midpoint in lambda), the state itself (the limit of
    `x_to / sigma_to`). [B, ...]"""
    at_infinity = jnp.where(jnp.isinf(sigma_to), x, d + sigma_to * x)
    return jnp.where(jnp.isinf(sigma), at_infinity, d + (sigma_to / sigma) * (x - d))


def _dpmpp_2s_step(
    denoise: Denoise,
    x: jax.Array,
    sigma: jax.Array,
    sigma_to: jax.Array,
    mid_at_infinity: jax.Array | float = 0.0,
) -> jax.Array:
    """DPM-Solver++(2S) from sigma to sigma_to with its midpoint `sqrt(sigma * sigma_to)` in
    lambda: two denoiser calls; into sigma_to = 0 the denoised sample (one call). From
    sigma = inf the midpoint is `mid_at_infinity`, the limit of `sqrt(sigma * sigma_to)` (0: none,
    the step into sigma_to = 0 is one call). [B, ...]"""
    d = denoise(x, sigma)  # [B, ...]
    at_infinity = jnp.isinf(sigma)

    def second_order() -> jax.Array:
        to = positive_or_half(sigma, sigma_to)
        sigma_mid = jnp.where(at_infinity, mid_at_infinity, jnp.sqrt(sigma * to))
        d_mid = denoise(_to(x, d, sigma, sigma_mid), sigma_mid)
        return _to(x, d_mid, sigma, sigma_to)

    finite_mid = (mid_at_infinity > 0) & jnp.isfinite(mid_at_infinity)  # eta = 1, sigma_1 > 0
    has_midpoint = (sigma_to > 0) | (at_infinity & finite_mid)
    return jax.lax.cond(has_midpoint, second_order, lambda: d)


@register("dpmpp_2s_ancestral", evals_per_step=2, starts_at_infinity=True)
def dpmpp_2s_ancestral(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "independent",
) -> jax.Array:
    """Ancestral sampling with DPM-Solver++(2S) steps: k-diffusion `sample_dpmpp_2s_ancestral`.

    Each step goes deterministically to `sigma_down` with the singlestep second-order
    DPM-Solver++ (Lu et al. 2022, DPM-Solver++ Algorithm 1, r = 1/2; two denoiser calls), then
    adds noise `s_noise * sigma_up`. A step with `sigma_down = 0` (into sigma = 0) is one Euler
    step, `x = D`. `eta = 0` is the deterministic DPM-Solver++(2S). From `sigmas[0] = inf` the
    first step is `D_mid + sigma_down eps`, with the midpoint at sigma = inf for eta < 1 (so
    `D_mid` is D at t = 1 again), at `sigma_1` for eta = 1 (where `sigma_down` tends to 0 like
    `sigma_1^2 / sigma_0`) and none for eta > 1 (`D_mid = D`). x: [B, ...]; sigmas: [n + 1].
    """
    noise_fn = stochastic_noise("dpmpp_2s_ancestral", eta, noise, key, x, sigmas)
    # From sigma = inf, sigma_down tends to sigma_1 sqrt(1 - eta^2) for eta < 1 (the midpoint to
    # inf), to sigma_1^2 / sigma for eta = 1 (the midpoint to sigma_1), and is 0 for eta > 1.
    mid_at_infinity = jnp.inf if eta < 1 else (sigmas[1] if eta == 1 else 0.0)

    def step(denoise: Denoise, x: jax.Array, sigma: jax.Array, sigma_to: jax.Array) -> jax.Array:
        return _dpmpp_2s_step(denoise, x, sigma, sigma_to, mid_at_infinity)

    return ancestral_sample(step, denoise, x, sigmas, noise_fn, eta, s_noise)


@register("dpmpp_sde", evals_per_step=2, starts_at_infinity=True)
def dpmpp_sde(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "independent",
    r: float = 0.5,
) -> jax.Array:
    """Stochastic DPM-Solver++ with two-stage steps: k-diffusion `sample_dpmpp_sde` (diffusers
    `DPMSolverSDEScheduler`).

    A step from sigma to sigma_next first takes an ancestral first-order step to the point
    `sigma_s = sigma^(1 - r) sigma_next^r` (a fraction r of the step in lambda) with noise
    `noise(sigma, sigma_s)`, denoises there, then takes an ancestral step from sigma to
    sigma_next with the combined denoised value `(1 - 1/(2r)) D + 1/(2r) D_s` and noise
    `noise(sigma, sigma_next)`. Two denoiser calls; a step into 0 is one Euler step, `x = D`.
    `noise="brownian"` draws both from one Brownian path, so the result converges as the steps
    grow. `eta = 0` with r = 1/2 is `dpmpp_2s_ancestral` with `eta = 0`. From `sigmas[0] = inf`
    the first point `sigma_s` is at sigma = inf too, where the state tends to
    `sigma_down / sigma_s eps + s_noise sigma_up / sigma_s noise` with `sigma / sigma_s -> inf`
    (the first noise replaces a share `min(1, eta)` of the start's). x: [B, ...];
    sigmas: [n + 1].
    """
    if not 0.0 < r < 1.0:
        raise UserError(f"sampler 'dpmpp_sde': r={r} must be in (0, 1)")
    noise_fn = stochastic_noise("dpmpp_sde", eta, noise, key, x, sigmas)
    fac = 1.0 / (2.0 * r)

    def ancestral(x: jax.Array, d: jax.Array, sigma: jax.Array, to: jax.Array) -> jax.Array:
        # to = inf (the first stage from sigma = inf): the state there is the limit of x / to,
        # reached with the factors sigma_down / to, sigma_up / to at to / sigma = 0.
        at_infinity = jnp.isinf(to)
        sigma_down, sigma_up = ancestral_step(sigma, jnp.where(at_infinity, 1.0, to), eta)
        x = jnp.where(at_infinity, sigma_down * x, _to(x, d, sigma, sigma_down))
        return x if noise_fn is None else x + s_noise * sigma_up * noise_fn(sigma, to)

    def step(x: jax.Array, inp: tuple) -> tuple[jax.Array, None]:
        sigma, sigma_next = inp
        d = denoise(x, sigma)  # [B, ...]

        def two_stage() -> jax.Array:
            sigma_s = sigma ** (1.0 - r) * positive_or_half(sigma, sigma_next) ** r
            d_s = denoise(ancestral(x, d, sigma, sigma_s), sigma_s)
            return ancestral(x, (1.0 - fac) * d + fac * d_s, sigma, sigma_next)

        return jax.lax.cond(sigma_next > 0, two_stage, lambda: d), None

    x, _ = jax.lax.scan(step, x, (sigmas[:-1], sigmas[1:]))
    return x
