"""Sampling noise schedules: `[n + 1]` sigmas, strictly descending, ending in a single 0.

Each schedule gives `n` distinct positive noise levels and then 0, so `n` sampler steps are all
real steps (a duplicated last sigma would make the final step a no-op). Schedules are computed
with numpy in float64 from concrete settings and returned as float32 JAX arrays.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.processes import Process
from jaxdiff.errors import UserError


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise UserError(f"number of sampling steps n={n!r} must be a positive integer")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0.0 < sigma_min < sigma_max:
        raise UserError(
            f"sigma_min={sigma_min}, sigma_max={sigma_max} must satisfy 0 < sigma_min < sigma_max"
        )


def _append_zero(sigmas: np.ndarray) -> jax.Array:
    """`[n]` positive sigmas -> `[n + 1]` float32 with a final 0."""
    return jnp.asarray(np.append(sigmas, 0.0), jnp.float32)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> jax.Array:
    """Karras et al. 2022, eq. 5: `sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho` for i < n, then 0. `[n + 1]`; n = 1 gives `[sigma_max, 0]`."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    if not rho > 0.0:
        raise UserError(f"rho={rho} must be > 0")
    ramp = np.linspace(0.0, 1.0, n)  # [n]
    min_inv, max_inv = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> jax.Array:
    """Sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0 (k-diffusion's
    `get_sigmas_exponential`; the limit rho -> infinity of `karras`). `[n + 1]`"""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def linspace(n: int, process: Process) -> jax.Array:
    """Sigmas evenly spaced in the process's own time variable (`process.sigma_to_t`) from
    t(sigma_max) to t(sigma_min), then 0. `[n + 1]`

    For `VPDiscrete` this is the timesteps `linspace(T - 1, 0, n)` mapped to sigma by
    interpolation in log sigma (k-diffusion's `DiscreteSchedule.get_sigmas`); for `EDM` and `VE`,
    whose time is log sigma, it equals `exponential`.
    """
    _check_n(n)
    with jax.ensure_compile_time_eval():
        t_hi = process.sigma_to_t(process.sigma_max)
        t_lo = process.sigma_to_t(process.sigma_min)
        sigmas = process.t_to_sigma(jnp.linspace(t_hi, t_lo, n))  # [n]
    return _append_zero(np.asarray(sigmas))


SCHEDULES: dict[str, Callable[..., jax.Array]] = {
    "karras": karras,
    "exponential": exponential,
    "linspace": linspace,
}


def make_sigmas(name: str, n: int, process: Process, **options: Any) -> jax.Array:
    """Sampling sigmas `[n + 1]` from the schedule `name` for `process`.

    `sigma_min` / `sigma_max` default to the process's range; other options (`rho` for "karras")
    go to the schedule function.
    """
    if name not in SCHEDULES:
        raise UserError(f"unknown sigma schedule {name!r}; accepted: {', '.join(SCHEDULES)}")
    _check_n(n)
    fn = SCHEDULES[name]
    takes = inspect.signature(fn).parameters
    params = [p for p in takes if p not in ("n", "process")]
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = ", ".join(params) if params else "none"
        raise UserError(
            f"sigma schedule {name!r} does not take option {unknown[0]!r}; accepted: {accepted}"
        )
    defaults = {"process": process, "sigma_min": process.sigma_min, "sigma_max": process.sigma_max}
    kwargs = {k: v for k, v in defaults.items() if k in takes} | options
    return fn(n, **kwargs)
