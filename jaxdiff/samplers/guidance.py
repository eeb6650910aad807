"""Classifier-free guidance as a transform of the denoiser.

CFG (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): with D_u the unconditional (or
negative-prompt) and D_c the conditional prediction, `D_cfg = D_u + w * (D_c - D_u)`. Both come
from ONE batched call: unconditional and conditional inputs are concatenated along the batch.
Because every parameterization gives `x0 = c_skip * x + c_out * F` with the same x, c_skip and
c_out in both halves, guiding x0 is the same as guiding eps or v.

Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", Section 3.4), per example with std over all non-batch axes:

    D_rescaled = D_cfg * std(D_c) / std(D_cfg)
    D_final    = phi * D_rescaled + (1 - phi) * D_cfg
               = D_cfg * (phi * std(D_c) / std(D_cfg) + 1 - phi)

This is diffusers' `rescale_noise_cfg` formula applied to the x0 prediction, the only prediction a
denoiser exposes, where diffusers applies it to the raw network output. Unlike CFG, the rescale
is not affine, so the two differ: for a v model (sigma_data = 1), `x0 = x / (1 + sigma^2) -
sigma / sqrt(1 + sigma^2) * v`, which tends to `-v` as sigma grows, so the two agree in the limit
of high noise; for an eps model diffusers' factor
`std(eps_c) / std(eps_cfg) = std(x - x0_c) / std(x - x0_cfg)` measures the removed noise rather
than the predicted image. The factor is a ratio of two stds over the same axes, so it does not
depend on the std's degrees-of-freedom correction (torch's `std` uses N - 1, `jnp.std` N).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.samplers.base import Denoise

# denoise_cond(x [B, ...], sigma [], cond: pytree of [B, ...]) -> x0_hat [B, ...]
CondDenoise = Callable[[jax.Array, jax.Array, Any], jax.Array]


def _at_least_f32(a: jax.Array) -> jax.Array:
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _std(a: jax.Array) -> jax.Array:
    """Per-example standard deviation over all non-batch axes. [B, ...] -> [B, 1, ..., 1]"""
    return jnp.std(a, axis=tuple(range(1, a.ndim)), keepdims=True)


def cfg(
    denoise_cond: CondDenoise,
    cond: Any,
    uncond: Any,
    scale: float | jax.Array,
    rescale: float = 0.0,
) -> Denoise:
    """Classifier-free guidance with optional guidance rescale (see the module docstring).

    cond, uncond: pytrees with the same structure, leaves [B, ...]. `scale` is the guidance weight
    w (1 is the plain conditional denoiser; a Python 1 skips the unconditional half entirely);
    `rescale` is phi in [0, 1]. Returns `denoise(x [B, ...], sigma [] or [B]) -> x0_hat [B, ...]`
    in at least float32.

    The same transform guides a network `net(x_in, t, cond) -> F` instead of a denoiser: since
    CFG is affine, guiding F (eps or v) gives the same x0 as guiding the denoiser, and the rescale
    then acts on F, as in diffusers' pipelines.
    """
    if isinstance(rescale, int | float) and not 0.0 <= rescale <= 1.0:
        raise UserError(f"guidance rescale={rescale} must be in [0, 1]")
    if isinstance(scale, int | float) and scale == 1:
        return lambda x, sigma: _at_least_f32(denoise_cond(x, sigma, cond))
    both = jax.tree.map(lambda u, c: jnp.concatenate([u, c]), uncond, cond)  # leaves [2B, ...]

    def guided(x: jax.Array, sigma: jax.Array) -> jax.Array:
        sigma = sigma if jnp.ndim(sigma) == 0 else jnp.concatenate([sigma, sigma])  # [] or [2B]
        out = _at_least_f32(denoise_cond(jnp.concatenate([x, x]), sigma, both))  # [2B, ...]
        d_u, d_c = jnp.split(out, 2)  # [B, ...] each
        d_cfg = d_u + scale * (d_c - d_u)
        if isinstance(rescale, int | float) and rescale == 0:
            return d_cfg
        ratio = _std(d_c) / _std(d_cfg)  # [B, 1, ..., 1]
        return d_cfg * (rescale * ratio + (1.0 - rescale))

    return guided
