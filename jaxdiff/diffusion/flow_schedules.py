"""Sampling grids of flow-matching models: the grids of diffusers' flow schedulers, as flow times
`t` (`x_t = (1 - t) x0 + t eps`) and as the sigmas `t / (1 - t)` that jaxdiff's samplers run
along, with `t = 1` as sigma = inf (see "Starting at sigma = inf" in `jaxdiff.samplers.base`).

- `flow_match_times`: `FlowMatchEulerDiscreteScheduler.set_timesteps` (and
  `FlowMatchHeunDiscreteScheduler`'s, the same grid with `shift` only): `n` times evenly spaced
  from 1 to the model's smallest shifted time, then shifted (`shift`, or diffusers' dynamic
  shift with `mu`), stretched to end at `shift_terminal`, and re-spaced ("karras",
  "exponential", "beta") over that range. It starts at t = 1.
- `flow_solver_times`: `DPMSolverMultistepScheduler` ("dpmsolver") and
  `UniPCMultistepScheduler` ("unipc") with `use_flow_sigmas=True`. DPM-Solver shifts the n + 1
  times `1 - linspace(1, 1 / T, n + 1)` and drops t = 0, so it starts at the shifted `1 - 1 / T`
  (0.999 unshifted, 0.9997 at shift 3); UniPC drops `1 / T` from `linspace(1, 1 / T, n + 1)`,
  shifts, and moves the first time of 1 to `1 - 1e-6`. Neither starts at t = 1.

Each is computed the way diffusers computes it (the training table in float32, the grid in
float64, the result rounded to float32), so the times are diffusers' to the bit; the sampler
then sees the same noise levels as the diffusers scheduler.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from jaxdiff.errors import UserError, check_choice

TIME_SHIFTS = ("exponential", "linear")
FLOW_SPACINGS = ("linear", "karras", "exponential", "beta")
SOLVER_CONVENTIONS = ("dpmsolver", "unipc")
# UniPC moves a first time within this of 1 down by it (its log of alpha = 1 - t would be -inf).
_UNIPC_TOP_OFFSET = 1e-6


def _check_grid(n: int, num_train_timesteps: int, shift: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise UserError(f"number of sampling steps n={n!r} must be a positive integer")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
        raise UserError(f"num_train_timesteps={num_train_timesteps!r} must be an integer >= 2")
    if num_train_timesteps < 2:
        raise UserError(f"num_train_timesteps={num_train_timesteps!r} must be an integer >= 2")
    if not shift > 0:
        raise UserError(f"shift={shift} must be > 0")


def _check_terminal(shift_terminal: float | None) -> None:
    if shift_terminal is not None and not 0.0 < shift_terminal < 1.0:
        raise UserError(f"shift_terminal={shift_terminal} must be in (0, 1)")


def shift_times(
    t: np.ndarray, shift: float = 1.0, mu: float | None = None, time_shift_type: str = "exponential"
) -> np.ndarray:
    """The resolution shift of flow times towards the noise: `shift t / (1 + (shift - 1) t)`
    (SD3), or with `mu` diffusers' dynamic shift `e^mu / (e^mu + 1/t - 1)` ("exponential",
    Flux) or `mu / (mu + 1/t - 1)` ("linear"). The same shape as `t`."""
    if mu is None:
        return shift * t / (1 + (shift - 1) * t)
    check_choice("time_shift_type", time_shift_type, TIME_SHIFTS)
    scale = math.exp(mu) if time_shift_type == "exponential" else mu
    return scale / (scale + (1 / t - 1))


def _stretch_to_terminal(t: np.ndarray, shift_terminal: float | None) -> np.ndarray:
    """diffusers' `stretch_shift_to_terminal`: `1 - t` scaled so the last time is
    `shift_terminal`."""
    if not shift_terminal:
        return t
    one_minus = 1 - t
    if one_minus[-1] == 0:
        raise UserError(
            f"shift_terminal={shift_terminal} needs a grid ending below t = 1; got "
            f"{t.shape[0]} time(s) at 1 (use n >= 2)"
        )
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def _respace(t: np.ndarray, n: int, spacing: str) -> np.ndarray:
    """`n` times re-spaced over `[t[-1], t[0]]`: Karras' rho = 7 ramp, log-uniform, or at the
    quantiles of Beta(0.6, 0.6) (Lee et al. 2024, "Beta Sampling is All You Need"), as
    diffusers' `_convert_to_karras` / `_exponential` / `_beta`."""
    low, high = float(t[-1]), float(t[0])
    if spacing == "karras":
        rho = 7.0
        low_inv, high_inv = low ** (1 / rho), high ** (1 / rho)
        return (high_inv + np.linspace(0, 1, n) * (low_inv - high_inv)) ** rho
    if spacing == "exponential":
        return np.exp(np.linspace(math.log(high), math.log(low), n))
    if spacing == "beta":
        quantiles = 1 - np.linspace(0, 1, n)
        # scipy.stats.beta.ppf(q, 0.6, 0.6), as diffusers calls it, is this inverse.
        return np.array(
            [low + scipy.special.betaincinv(0.6, 0.6, q) * (high - low) for q in quantiles]
        )
    return t


def flow_match_times(
    n: int,
    shift: float = 1.0,
    mu: float | None = None,
    time_shift_type: str = "exponential",
    shift_terminal: float | None = None,
    spacing: str = "linear",
    num_train_timesteps: int = 1000,
) -> np.ndarray:
    """The flow times `[n]` (float32, descending from 1) of
    `FlowMatchEulerDiscreteScheduler(shift=..., use_dynamic_shifting=mu is not None,
    time_shift_type=..., shift_terminal=..., use_{karras,exponential,beta}_sigmas=...)
    .set_timesteps(n, mu=mu)`; `spacing` "linear" is diffusers' default. As diffusers, a fixed
    `shift` applies twice (to the training table whose smallest time bounds the grid, and to the
    grid); with `mu` the table is not shifted. `FlowMatchHeunDiscreteScheduler` has the grid of
    `shift` alone."""
    _check_grid(n, num_train_timesteps, shift)
    _check_terminal(shift_terminal)
    check_choice("spacing", spacing, FLOW_SPACINGS)
    check_choice("time_shift_type", time_shift_type, TIME_SHIFTS)
    table = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
    table = table / np.float32(num_train_timesteps)  # [T] float32, as diffusers' __init__
    if mu is None:
        table = shift * table / (1 + (shift - 1) * table)
    t_max, t_min = float(table[0]), float(table[-1])
    grid = np.linspace(t_max * num_train_timesteps, t_min * num_train_timesteps, n)
    t = shift_times(grid / num_train_timesteps, shift, mu, time_shift_type)  # [n] float64
    t = _respace(_stretch_to_terminal(t, shift_terminal), n, spacing)
    return t.astype(np.float32)


def flow_solver_times(
    n: int,
    shift: float = 1.0,
    mu: float | None = None,
    time_shift_type: str = "exponential",
    shift_terminal: float | None = None,
    convention: str = "dpmsolver",
    num_train_timesteps: int = 1000,
) -> np.ndarray:
    """The flow times `[n]` (float32, descending) of `DPMSolverMultistepScheduler`
    ("dpmsolver") or `UniPCMultistepScheduler` ("unipc") with `use_flow_sigmas=True,
    flow_shift=shift` after `set_timesteps(n, mu=mu)`. DPM-Solver takes `mu` as
    `flow_shift = e^mu` and has no `shift_terminal`; UniPC takes `mu` with
    `use_dynamic_shifting` and `time_shift_type`."""
    _check_grid(n, num_train_timesteps, shift)
    _check_terminal(shift_terminal)
    check_choice("convention", convention, SOLVER_CONVENTIONS)
    if convention == "dpmsolver":
        if shift_terminal is not None:
            raise UserError("shift_terminal: DPMSolverMultistepScheduler's flow grid has none")
        if mu is not None:
            check_choice("time_shift_type", time_shift_type, ("exponential",))
            shift, mu = float(np.exp(mu)), None
        rising = 1.0 - np.linspace(1, 1 / num_train_timesteps, n + 1)  # [n + 1], from 0
        return np.flip(shift_times(rising, shift))[:-1].astype(np.float32)
    t = np.linspace(1, 1 / num_train_timesteps, n + 1)[:-1]  # [n]
    t = _stretch_to_terminal(shift_times(t, shift, mu, time_shift_type), shift_terminal)
    if np.fabs(t[0] - 1) < _UNIPC_TOP_OFFSET:
        t[0] -= _UNIPC_TOP_OFFSET
    return t.astype(np.float32)


def times_to_sigmas(times: np.ndarray) -> np.ndarray:
    """Flow times `[n]` (descending, in (0, 1]) -> sigmas `t / (1 - t)` then 0, float64
    `[n + 1]`; t = 1 is sigma = inf."""
    t = np.asarray(times, np.float64)
    if t.ndim != 1 or not np.all((t > 0) & (t <= 1)):
        raise UserError(f"flow times must be a 1-D array in (0, 1]; got {t.tolist()}")
    with np.errstate(divide="ignore"):
        sigmas = np.where(t < 1, t / (1 - t), np.inf)
    return np.append(sigmas, 0.0)


def _as_sigmas(times: Callable[..., np.ndarray]) -> Callable[..., jax.Array]:
    """A schedule `[n + 1]` (float32 sigmas, from inf or below down to 0) from a function of
    flow times; it takes the same arguments (and shows them to `inspect.signature`)."""

    @functools.wraps(times)
    def sigmas(n: int, **options: Any) -> jax.Array:
        return jnp.asarray(times_to_sigmas(times(n, **options)), jnp.float32)

    sigmas.__doc__ = f"Sigmas `[n + 1]` (float32) of `{times.__name__}`, down to 0."
    return sigmas


flow_match = _as_sigmas(flow_match_times)
flow_solver = _as_sigmas(flow_solver_times)
