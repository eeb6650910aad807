"""Limits on the denoised sample, as transforms of the denoiser.

- `clip_denoised`: x0 clipped to `[-limit, limit]` (DDPM's `clip_sample`, Ho et al. 2020).
- `threshold_denoised`: dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image
  Diffusion Models with Deep Language Understanding", Section 2.3): per example, `s` is the
  `ratio` quantile of `|x0|`, clamped to `[1, max_value]`, and x0 becomes `clip(x0, -s, s) / s`
  (diffusers' `_threshold_sample`).

A sampler sees the limited x0 and derives the noise direction from it: diffusers' `DDIMScheduler`
with `use_clipped_model_output=True` (`pred_epsilon = (sample - sqrt(alpha) * x0) /
sqrt(1 - alpha)`). By default DDIM keeps the network's raw eps next to the clipped x0, a step
that depends on the next noise level and so is not a transform of the denoiser; DDPM, DPM-Solver
and UniPC use only x0 and agree with this.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Denoise


def clip_denoised(denoise: Denoise, limit: float) -> Denoise:
    """`denoise` with its output clipped to `[-limit, limit]`."""
    return lambda x, sigma: jnp.clip(denoise(x, sigma), -limit, limit)


def threshold_denoised(denoise: Denoise, ratio: float, max_value: float) -> Denoise:
    """`denoise` with dynamic thresholding (see the module docstring). x0: [B, ...]."""

    def thresholded(x: jax.Array, sigma: jax.Array) -> jax.Array:
        x0 = denoise(x, sigma)  # [B, ...]
        flat = jnp.abs(x0).reshape(x0.shape[0], -1)  # [B, N]
        s = jnp.clip(jnp.quantile(flat, ratio, axis=1), 1.0, max_value)  # [B]
        s = s.reshape((-1,) + (1,) * (x0.ndim - 1))  # [B, 1, ..., 1]
        return jnp.clip(x0, -s, s) / s

    return thresholded
