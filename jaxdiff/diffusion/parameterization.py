"""Network parameterizations: a network output F becomes the denoiser `D = c_skip * x + c_out * F`.

All in "variance exploding" form `x = x0 + sigma * eps` (Karras et al. 2022, eq. 7), following
k-diffusion's wrapper classes:

- "eps" (Ho et al. 2020): F predicts the noise eps; `c_skip = 1`, `c_out = -sigma`.
- "x0": F predicts x0 directly; `c_skip = 0`, `c_out = 1`.
- "v" (Salimans & Ho 2022, "Progressive Distillation"; k-diffusion `VDenoiser`): F predicts
  `v = (sigma_data^2 * eps - sigma * x0) / (sigma_data * sqrt(sigma^2 + sigma_data^2))`;
  `c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)`,
  `c_out = -sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)`. With sigma_data = 1 (VP) this is
  `v = alpha * eps - sigma_vp * x0` on the VP latent `z = alpha * x`.
- "edm" (Karras et al. 2022, eq. 7 and Table 1): the same `c_skip` and `c_out` with a plus sign,
  so F = -v.
- "velocity" (rectified flow / flow matching, Liu et al. 2023, Lipman et al. 2023): F predicts
  `eps - x0`, the velocity `d x_t / d t` of `x_t = (1 - t) x0 + t eps`; from
  `x = (1 + sigma) x0 + sigma F`, `c_skip = 1 / (1 + sigma)`, `c_out = -sigma / (1 + sigma)`.

The network's input scaling `c_in` and noise conditioning belong to the process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.errors import check_choice

PARAMETERIZATIONS: tuple[str, ...] = ("eps", "v", "x0", "edm", "velocity")


def scalings(
    parameterization: str, sigma: jax.Array, sigma_data: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """`(c_skip, c_out)` at noise level `sigma` (any shape; both outputs take its shape)."""
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    sigma = jnp.asarray(sigma)
    sigma = sigma.astype(jnp.promote_types(sigma.dtype, jnp.float32))
    if parameterization == "eps":
        return jnp.ones_like(sigma), -sigma
    if parameterization == "x0":
        return jnp.zeros_like(sigma), jnp.ones_like(sigma)
    if parameterization == "velocity":
        return 1.0 / (1.0 + sigma), -sigma / (1.0 + sigma)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data * jax.lax.rsqrt(sigma**2 + sigma_data**2)
    return c_skip, (-c_out if parameterization == "v" else c_out)


def scalings_at_infinity(
    parameterization: str, sigma_data: float = 1.0
) -> tuple[float, float] | None:
    """The limits of `(sigma * c_skip, c_out)` as sigma -> inf, or None where they are not
    finite ("eps": `c_out = -sigma`). With the state `x / sigma` there, `D = sigma * c_skip *
    (x / sigma) + c_out * F`."""
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    return {
        "x0": (0.0, 1.0),
        "velocity": (1.0, -1.0),
        "v": (0.0, -sigma_data),
        "edm": (0.0, sigma_data),
    }.get(parameterization)


def eps_to_x0(x: jax.Array, sigma: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 from a noise prediction: `x0 = x - sigma * eps`. `sigma` broadcasts against `x`."""
    return x - sigma * eps


def x0_to_eps(x: jax.Array, sigma: jax.Array, x0: jax.Array) -> jax.Array:
    """Noise from an x0 prediction: `eps = (x - x0) / sigma` (sigma > 0)."""
    return (x - x0) / sigma


def v_to_x0(x: jax.Array, sigma: jax.Array, v: jax.Array, sigma_data: float = 1.0) -> jax.Array:
    """x0 from a v prediction: `x0 = (sigma_data^2 * x - sigma * sigma_data * sqrt(sigma^2 +
    sigma_data^2) * v) / (sigma^2 + sigma_data^2)`."""
    c_skip, c_out = scalings("v", sigma, sigma_data)
    return c_skip * x + c_out * v


def x0_to_v(x: jax.Array, sigma: jax.Array, x0: jax.Array, sigma_data: float = 1.0) -> jax.Array:
    """v from an x0 prediction: `v = (sigma_data^2 * eps - sigma * x0) / (sigma_data *
    sqrt(sigma^2 + sigma_data^2))` with `eps = (x - x0) / sigma`, written without dividing by
    sigma: `v = (sigma_data^2 * x - (sigma^2 + sigma_data^2) * x0) / (sigma * sigma_data *
    sqrt(sigma^2 + sigma_data^2))` (sigma > 0)."""
    s2 = sigma**2 + sigma_data**2
    return (sigma_data**2 * x - s2 * x0) / (sigma * sigma_data * jnp.sqrt(s2))


def network_target(
    x0: jax.Array,
    noise: jax.Array,
    sigma: jax.Array,
    parameterization: str,
    sigma_data: float = 1.0,
) -> jax.Array:
    """The network's regression target `(x0 - c_skip * x) / c_out` for `x = x0 + sigma * noise`.

    Written in closed form per parameterization, so no cancellation at small sigma: eps -> noise,
    x0 -> x0, v -> `(sigma_data^2 * noise - sigma * x0) / (sigma_data * sqrt(sigma^2 +
    sigma_data^2))`, edm -> minus that, velocity -> `noise - x0`. `sigma` broadcasts against
    `x0`. Same shape as `x0`.
    """
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "eps":
        return noise
    if parameterization == "velocity":
        return noise - x0
    if parameterization == "x0":
        return x0
    v = (sigma_data**2 * noise - sigma * x0) / (sigma_data * jnp.sqrt(sigma**2 + sigma_data**2))
    return v if parameterization == "v" else -v
