"""Inpainting with a standard denoiser: the known region is re-imposed at every noise level.

RePaint-style replacement (Lugmayr et al. 2022 without resampling; diffusers'
`StableDiffusionInpaintPipeline` with a 4-channel UNet): at each step the part of the sample
outside the mask is replaced by the known latent noised to the current level with one fixed
noise, `known + sigma * noise`, and the model fills in the rest.

Here it is a transform of the denoiser, so every sampler of the zoo inpaints unchanged. Before the
network sees `x`, its known region is replaced by `known + sigma * noise`; the denoiser returns
`known` there. Samplers update each element from that element's `x` and `D` only, so the region
to fill evolves exactly as with diffusers' step-then-replace loop; the known region of the state
is never seen again and `blend_known` puts `known` back at the end. At the first noise level,
`sigma_start`, the input is left as it is: diffusers' loop replaces only after a step, so a run
from pure noise (strength 1) first sees noise everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers.base import Denoise


def reimpose_known(
    denoise: Denoise,
    known: jax.Array,
    mask: jax.Array,
    noise: jax.Array,
    sigma_start: jax.Array,
) -> Denoise:
    """`denoise` with the known region re-imposed (see the module docstring).

    known, noise: [B, ...]; mask: broadcastable to them, 1 where the model generates and 0 where
    `known` is kept; sigma_start: [] the first noise level of the run.
    """

    def inpaint(x: jax.Array, sigma: jax.Array) -> jax.Array:
        replaced = mask * x + (1.0 - mask) * (known + sigma * noise)
        x_in = jnp.where(sigma < sigma_start, replaced, x)
        return mask * denoise(x_in, sigma) + (1.0 - mask) * known

    return inpaint


def blend_known(x: jax.Array, known: jax.Array, mask: jax.Array) -> jax.Array:
    """The final sample with the known region restored: `mask * x + (1 - mask) * known`."""
    return mask * x + (1.0 - mask) * known
