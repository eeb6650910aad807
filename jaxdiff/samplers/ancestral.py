"""Ancestral samplers (DDPM, DDIM, Euler ancestral) and k-diffusion's DPM-2, in sigma space.

All samplers here take, per interval `sigma -> sigma_next`, a deterministic step of the
probability-flow ODE `dx/dsigma = (x - D(x, sigma)) / sigma` to a lower level `sigma_down`, then
add fresh noise of standard deviation `sigma_up`, with `sigma_down^2 + sigma_up^2 = sigma_next^2`
(k-diffusion `get_ancestral_step`):

    sigma_up   = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)

`eta = 0` is the plain ODE step (no noise, no key needed); `eta = 1` is the posterior of the
forward chain. The VE chain `x_t = x_s + sqrt(sigma_t^2 - sigma_s^2) * noise` is the VP chain of
DDPM divided by `sqrt(alpha_bar)` (`sigma^2 = (1 - alpha_bar) / alpha_bar`, any two chosen
timesteps), and its posterior is

    q(x_s | x_t, x0) = N(x0 + sigma_s^2 / sigma_t^2 (x_t - x0),
                         sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2)

(Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 6-7, mapped to VE form). An
Euler step from `sigma_t` lands on `x0 + sigma_down / sigma_t (x_t - x0)`, so with `x0 = D(x_t)`
the Euler step to `sigma_down = sigma_s^2 / sigma_t` plus noise `sigma_up` is exactly this
posterior: DDPM is ancestral Euler with `eta = 1`. DDIM's update (Song et al. 2021, "Denoising
Diffusion Implicit Models", eq. 12 with sigma_t(eta) of eq. 16) divided by `sqrt(alpha_bar_s)` is
`x_s = x0 + sqrt(sigma_s^2 - sigma_eta^2) eps + sigma_eta * noise` with `sigma_eta` equal to
`sigma_up` above: DDIM is ancestral Euler with the same `eta`, and Euler for `eta = 0`.

With the sigmas of a diffusers scheduler's timesteps, `ddpm` matches `DDPMScheduler`
(variance_type "fixed_small"), `ddim` matches `DDIMScheduler` (including set_alpha_to_one=False,
whose schedule ends at a sigma > 0), `euler_ancestral` matches `EulerAncestralDiscreteScheduler`,
`dpm_2` matches `KDPM2DiscreteScheduler` and `dpm_2_ancestral` matches
`KDPM2AncestralDiscreteScheduler`: the same denoiser calls at the same sigmas, and the same
result when handed the same standard normal per interval (diffusers skips the draws that would be
scaled by 0). Deliberate differences: `sigma_up`, `sigma_down` are computed in a form without
cancellation (`ancestral_step`); DDPM's last variance is 0 where diffusers clamps it to 1e-20;
DDIM with `eta > 1` is clamped as in k-diffusion where diffusers gives NaN.

Noise comes from `jaxdiff.samplers.noise` (`noise="independent"` or `"brownian"`), scaled by
`s_noise`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Denoise, register
from jaxdiff.samplers.noise import NoiseSource, stochastic_noise
from jaxdiff.samplers.ode import euler_step

# step(denoise, x [B, ...], sigma [], sigma_to []) -> x [B, ...] at sigma_to, without noise
Step = Callable[[Denoise, jax.Array, jax.Array, jax.Array], jax.Array]


def ancestral_step(
    sigma: jax.Array, sigma_next: jax.Array, eta: float
) -> tuple[jax.Array, jax.Array]:
    """k-diffusion `get_ancestral_step`: `(sigma_down, sigma_up)` for the interval from `sigma`
    down to `sigma_next` (see the module docstring).

    Written as `sigma_next` times factors of `r = sigma_next / sigma`, which is the same function
    but avoids the cancellation in `sigma_next^2 - sigma_up^2` when `r` is small:
    `sigma_up = sigma_next * min(1, eta * sqrt(1 - r^2))` and
    `sigma_down = sigma_next * sqrt(max(0, 1 - eta^2 + eta^2 r^2))`."""
    r = sigma_next / sigma
    sigma_up = sigma_next * jnp.minimum(1.0, eta * jnp.sqrt((1.0 - r) * (1.0 + r)))
    sigma_down = sigma_next * jnp.sqrt(jnp.maximum(0.0, (1.0 - eta**2) + eta**2 * r**2))
    return sigma_down, sigma_up


def _derivative(denoise: Denoise, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The PF-ODE velocity `dx/dsigma = (x - D(x, sigma)) / sigma` (k-diffusion `to_d`). [B, ...]"""
    return (x - denoise(x, sigma)) / sigma


def _euler_step(denoise: Denoise, x: jax.Array, sigma: jax.Array, sigma_to: jax.Array) -> jax.Array:
    """One Euler step of the PF-ODE from `sigma` (inf too) to `sigma_to`. One denoiser call."""
    return euler_step(x, denoise(x, sigma), sigma, sigma_to)


def _dpm_2_step(denoise: Denoise, x: jax.Array, sigma: jax.Array, sigma_to: jax.Array) -> jax.Array:
    """k-diffusion's DPM-2 step (`sample_dpm_2`): the midpoint method with the midpoint at
    `sigma_mid = exp((log sigma + log sigma_to) / 2) = sqrt(sigma * sigma_to)`, the geometric mean
    that `KDPM2DiscreteScheduler` also uses. Two denoiser calls; an Euler step (one call) when
    `sigma_to = 0`, where the midpoint would be 0."""
    d = _derivative(denoise, x, sigma)  # [B, ...]

    def midpoint() -> jax.Array:
        sigma_mid = jnp.sqrt(sigma * sigma_to)
        x_mid = x + d * (sigma_mid - sigma)
        return x + _derivative(denoise, x_mid, sigma_mid) * (sigma_to - sigma)

    return jax.lax.cond(sigma_to > 0, midpoint, lambda: x + d * (sigma_to - sigma))


def ancestral_sample(
    step: Step,
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    noise_fn: NoiseSource | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> jax.Array:
    """Run `step(denoise, x, sigma, sigma_to)` over every interval of `sigmas` in one scan; with a
    noise source, each step goes to `sigma_down` and adds
    `s_noise * sigma_up * noise_fn(sigma, sigma_next)`, else it goes to `sigma_next`. Shared by
    every ancestral sampler. x: [B, ...]; sigmas: [n + 1]."""

    def body(x: jax.Array, interval: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        sigma, sigma_next = interval
        if noise_fn is None:
            return step(denoise, x, sigma, sigma_next), None
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = step(denoise, x, sigma, sigma_down)
        return x + noise_fn(sigma, sigma_next) * (s_noise * sigma_up), None

    x, _ = jax.lax.scan(body, x, (sigmas[:-1], sigmas[1:]))
    return x


@register("ddpm", starts_at_infinity=True)
def ddpm(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    s_noise: float = 1.0,
    noise: str = "independent",
) -> jax.Array:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2 with variance `beta_tilde`): sample
    the posterior `q(x_next | x, x0 = D(x, sigma))` of the forward chain between consecutive
    sigmas, which is ancestral Euler with `eta = 1` (module docstring). Matches diffusers'
    `DDPMScheduler` (variance_type "fixed_small") given the sigmas of its timesteps, also with
    fewer steps than training steps (the chain of the chosen timesteps). Needs a key.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step."""
    noise_fn = stochastic_noise("ddpm", 1.0, noise, key, x, sigmas)
    return ancestral_sample(_euler_step, denoise, x, sigmas, noise_fn, 1.0, s_noise)


@register("ddim", starts_at_infinity=True)
def ddim(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise: str = "independent",
) -> jax.Array:
    """DDIM (Song et al. 2021, eq. 12 with `sigma_t(eta)` of eq. 16), in sigma space: `eta = 0`
    (the default) is deterministic and equals Euler; `eta = 1` equals DDPM. Matches diffusers'
    `DDIMScheduler`; its `set_alpha_to_one=False` is a schedule ending at the sigma of timestep 0.
    `eta > 1` clamps `sigma_up` to `sigma_next` as k-diffusion does (diffusers gives NaN there).
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step; a key when `eta > 0`."""
    noise_fn = stochastic_noise("ddim", eta, noise, key, x, sigmas)
    return ancestral_sample(_euler_step, denoise, x, sigmas, noise_fn, eta, s_noise)


@register("euler_ancestral", starts_at_infinity=True)
def euler_ancestral(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "independent",
) -> jax.Array:
    """Euler ancestral, k-diffusion `sample_euler_ancestral`: an Euler step to `sigma_down`, then
    noise `s_noise * sigma_up`. Matches diffusers' `EulerAncestralDiscreteScheduler` (eta = 1).
    The same method as `ddim`, with k-diffusion's default `eta = 1`.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step; a key when `eta > 0`."""
    noise_fn = stochastic_noise("euler_ancestral", eta, noise, key, x, sigmas)
    return ancestral_sample(_euler_step, denoise, x, sigmas, noise_fn, eta, s_noise)


@register("dpm_2", evals_per_step=2)
def dpm_2(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """DPM-2, k-diffusion `sample_dpm_2` without churn: a second-order midpoint step per interval
    with the midpoint at the geometric mean of the two sigmas; a step to sigma = 0 is an Euler
    step. Matches diffusers' `KDPM2DiscreteScheduler`, which makes the same denoiser calls (its
    midpoint timestep maps back to the same sigma). Deterministic; `key` is unused.
    x: [B, ...]; sigmas: [n + 1] descending. Two denoiser calls per step (one into sigma = 0)."""
    return ancestral_sample(_dpm_2_step, denoise, x, sigmas)


@register("dpm_2_ancestral", evals_per_step=2)
def dpm_2_ancestral(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "independent",
) -> jax.Array:
    """DPM-2 ancestral, k-diffusion `sample_dpm_2_ancestral`: a DPM-2 step to `sigma_down` (Euler
    when `sigma_down = 0`), then noise `s_noise * sigma_up`. Matches diffusers'
    `KDPM2AncestralDiscreteScheduler` (eta = 1); `eta = 0` equals `dpm_2`. With `eta = 1`,
    `sigma_down = sigma_next^2 / sigma`, so the midpoint `sqrt(sigma * sigma_down)` is
    `sigma_next` itself.
    x: [B, ...]; sigmas: [n + 1] descending. Two denoiser calls per step (one into sigma = 0);
    a key when `eta > 0`."""
    noise_fn = stochastic_noise("dpm_2_ancestral", eta, noise, key, x, sigmas)
    return ancestral_sample(_dpm_2_step, denoise, x, sigmas, noise_fn, eta, s_noise)
