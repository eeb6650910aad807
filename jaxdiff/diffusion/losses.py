"""Denoising loss weightings over noise levels.

A weighting is a function `lambda(sigma)` on the x0-space error `||D(x, sigma) - x0||^2`
(Karras et al. 2022, eq. 8). Since `D - x0 = c_out * (F - target)`, the same loss on the network's
own output is `lambda(sigma) * c_out^2 * ||F - target||^2`; the loss is computed in that target
space, where the error has unit scale at every sigma.

- "uniform": uniform in the parameterization's own target space, `lambda = 1 / c_out^2`: the plain
  eps-MSE for "eps" (Ho et al. 2020), v-MSE for "v", x0-MSE for "x0".
- "min_snr": Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
  Strategy"), `lambda = min(SNR, gamma)` with `SNR = 1 / sigma^2`; on the eps loss this is
  `min(SNR, gamma) / SNR`, on the v loss (sigma_data = 1) `min(SNR, gamma) / (SNR + 1)`.
- "edm": Karras et al. 2022, eq. 8 and Table 1, `lambda = (sigma^2 + sigma_data^2) /
  (sigma * sigma_data)^2`, which is 1 on the "edm" parameterization's target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.diffusion.parameterization import scalings
from jaxdiff.errors import check_choice

WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr", "edm")


def x0_weight(
    weighting: str,
    sigma: jax.Array,
    parameterization: str,
    sigma_data: float = 1.0,
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """`lambda(sigma)`, the weight on the x0-space error. Same shape as `sigma` (sigma > 0)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    sigma = jnp.asarray(sigma)
    sigma = sigma.astype(jnp.promote_types(sigma.dtype, jnp.float32))
    if weighting == "uniform":
        _, c_out = scalings(parameterization, sigma, sigma_data)
        return 1.0 / c_out**2
    if weighting == "min_snr":
        return jnp.minimum(1.0 / sigma**2, min_snr_gamma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def target_weight(
    weighting: str,
    sigma: jax.Array,
    parameterization: str,
    sigma_data: float = 1.0,
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """`lambda(sigma) * c_out(sigma)^2`, the weight on the network-target-space error."""
    check_choice("weighting", weighting, WEIGHTINGS)
    sigma = jnp.asarray(sigma)
    sigma = sigma.astype(jnp.promote_types(sigma.dtype, jnp.float32))
    if weighting == "uniform":
        return jnp.ones_like(sigma)
    _, c_out = scalings(parameterization, sigma, sigma_data)
    return x0_weight(weighting, sigma, parameterization, sigma_data, min_snr_gamma) * c_out**2


def denoising_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Per-example weighted MSE: `weight * mean((pred - target)^2)` over all but the batch axis.

    pred, target: [B, ...]; weight: [B]. Returns [B] in (at least) float32.
    """
    dtype = jnp.promote_types(jnp.result_type(pred, target), jnp.float32)
    err = pred.astype(dtype) - target.astype(dtype)  # [B, ...]
    mse = jnp.mean(jnp.square(err), axis=tuple(range(1, err.ndim)))  # [B]
    return weight.astype(dtype) * mse
