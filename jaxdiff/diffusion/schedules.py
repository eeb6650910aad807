"""Sampling noise schedules: `[n + 1]` sigmas, strictly descending.

Each schedule gives `n` distinct positive noise levels and then a final sigma, so `n` sampler
steps are all real steps (a duplicated last sigma would make the final step a no-op). The final
sigma is 0, except for `discrete(..., final_sigma="sigma_min")`, which ends at the trained
model's smallest noise level as some diffusers schedulers do. Schedules are computed with numpy
in float64 from concrete settings and returned as float32 JAX arrays.

Continuous schedules (`karras`, `exponential`, `polyexponential`, `logsnr_uniform`,
`vp_uniform_time`) take a sigma range; `linspace` follows a process's own time variable;
`discrete` reproduces the timestep spacings of diffusers' schedulers for a `VPDiscrete` model,
with `discrete_timesteps` giving the matching timesteps; `flow_match` and `flow_solver` those of
its flow-matching schedulers (`flow_schedules.py`), from t = 1 (sigma = inf) or just below.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.flow_schedules import flow_match, flow_solver
from jaxdiff.diffusion.processes import Process, VPDiscrete
from jaxdiff.errors import UserError, check_choice


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise UserError(f"number of sampling steps n={n!r} must be a positive integer")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0.0 < sigma_min < sigma_max:
        raise UserError(
            f"sigma_min={sigma_min}, sigma_max={sigma_max} must satisfy 0 < sigma_min < sigma_max"
        )


def _check_rho(rho: float) -> None:
    if not rho > 0.0:
        raise UserError(f"rho={rho} must be > 0")


def _append_final(sigmas: np.ndarray, final: float = 0.0) -> jax.Array:
    """`[n]` positive sigmas -> `[n + 1]` float32 ending in `final`."""
    return jnp.asarray(np.append(sigmas, final), jnp.float32)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> jax.Array:
    """Karras et al. 2022, eq. 5: `sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho` for i < n, then 0. `[n + 1]`; n = 1 gives `[sigma_max, 0]`.

    k-diffusion's `get_sigmas_karras`. Over a `VPDiscrete` process's range it is diffusers'
    `EulerDiscreteScheduler(use_karras_sigmas=True)` with its default "linspace" spacing; with
    other spacings diffusers takes the range of its spaced sigmas, `s[-2]` to `s[0]` for
    `s = discrete(n, process, spacing, steps_offset, convention="euler")`.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    _check_rho(rho)
    ramp = np.linspace(0.0, 1.0, n)  # [n]
    min_inv, max_inv = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return _append_final((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> jax.Array:
    """Sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0 (k-diffusion's
    `get_sigmas_exponential`; the limit rho -> infinity of `karras`). `[n + 1]`"""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    return _append_final(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> jax.Array:
    """k-diffusion's `get_sigmas_polyexponential`: `log sigma_i = log sigma_min + (1 - i / (n - 1))
    ^ rho * (log sigma_max - log sigma_min)` for i < n, then 0. `[n + 1]`

    Polynomial in log sigma: rho = 1 is `exponential`, rho > 1 spends more steps at low noise.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    _check_rho(rho)
    ramp = np.linspace(1.0, 0.0, n) ** rho  # [n]
    log_min = math.log(sigma_min)
    return _append_final(np.exp(log_min + ramp * (math.log(sigma_max) - log_min)))


def logsnr_uniform(n: int, sigma_min: float, sigma_max: float) -> jax.Array:
    """Sigmas evenly spaced in log-SNR `lambda = -2 log sigma` (the SNR of `x = x0 + sigma * eps`
    is `1 / sigma^2`), from `lambda(sigma_max)` up to `lambda(sigma_min)`, then 0. `[n + 1]`

    This is the half-log-SNR grid of DPM-Solver (Lu et al. 2022, "uniform logSNR" time steps)
    seen in sigma. Since lambda is affine in log sigma, the schedule is the same as `exponential`
    (equal up to float rounding); it is kept as the log-SNR view of that schedule.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    logsnr = np.linspace(-2.0 * math.log(sigma_max), -2.0 * math.log(sigma_min), n)  # [n]
    return _append_final(np.exp(-0.5 * logsnr))


def vp_uniform_time(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3
) -> jax.Array:
    """k-diffusion's `get_sigmas_vp`: the continuous VP-SDE (Song et al. 2021) with linear
    `beta(t) = beta_min + beta_d * t`, at times evenly spaced from 1 down to `eps_s`:
    `sigma(t) = sqrt(exp(beta_d * t^2 / 2 + beta_min * t) - 1)`, then 0. `[n + 1]`

    The sigma range comes from the VP-SDE settings, not from a process (defaults: about
    152 down to 0.0100).
    """
    _check_n(n)
    if not 0.0 < eps_s < 1.0:
        raise UserError(f"eps_s={eps_s} must satisfy 0 < eps_s < 1")
    if not (beta_d >= 0.0 and beta_min >= 0.0 and beta_d + beta_min > 0.0):
        raise UserError(f"beta_d={beta_d}, beta_min={beta_min} must be >= 0 and not both 0")
    t = np.linspace(1.0, eps_s, n)  # [n]
    return _append_final(np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t)))


def linspace(n: int, process: Process) -> jax.Array:
    """Sigmas evenly spaced in the process's own time variable (`process.sigma_to_t`) from
    t(sigma_max) to t(sigma_min), then 0. `[n + 1]`

    For `VPDiscrete` this is the timesteps `linspace(T - 1, 0, n)` mapped to sigma by
    interpolation in log sigma (k-diffusion's `DiscreteSchedule.get_sigmas`); diffusers' Euler
    schedulers interpolate sigma linearly instead (`discrete(..., spacing="linspace",
    convention="euler")`), which differs where the timesteps are fractional. For `EDM` and `VE`,
    whose time is log sigma, it equals `exponential`.
    """
    _check_n(n)
    with jax.ensure_compile_time_eval():
        t_hi = process.sigma_to_t(process.sigma_max)
        t_lo = process.sigma_to_t(process.sigma_min)
        sigmas = process.t_to_sigma(jnp.linspace(t_hi, t_lo, n))  # [n]
    return _append_final(np.asarray(sigmas))


@dataclasses.dataclass(frozen=True)
class _Convention:
    """How one family of diffusers schedulers places its `set_timesteps` grid.

    `extra_points`: "leading" and "linspace" lay out `n + extra_points` timesteps and drop the
    lowest ones ("trailing" always lays out `n`). `fractional_linspace`: "linspace" keeps
    diffusers' float32 fractional timesteps instead of rounding them to integers.
    """

    extra_points: int
    fractional_linspace: bool


DISCRETE_CONVENTIONS: dict[str, _Convention] = {
    # DDIMScheduler, DDPMScheduler, PNDMScheduler.
    "ddim": _Convention(extra_points=0, fractional_linspace=False),
    # EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
    # LMSDiscreteScheduler, KDPM2DiscreteScheduler.
    "euler": _Convention(extra_points=0, fractional_linspace=True),
    # DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler ("linspace" only),
    # DEISMultistepScheduler, UniPCMultistepScheduler.
    "dpmsolver": _Convention(extra_points=1, fractional_linspace=False),
}
SPACINGS = ("leading", "trailing", "linspace")
FINAL_SIGMAS = ("zero", "sigma_min")


def _spaced_grid(
    n: int, num_train: int, spacing: str, steps_offset: int, convention: _Convention
) -> np.ndarray:
    """The timesteps of diffusers' `set_timesteps`, descending, float64 (unchecked)."""
    if spacing == "trailing":
        # Float `arange` can give n + 1 points, the last one ending at timestep -1.
        return np.round(np.arange(num_train, 0, -num_train / n)) - 1.0
    m = n + convention.extra_points
    if spacing == "leading":
        grid = np.arange(m) * (num_train // m) + steps_offset  # [m]
    elif convention.fractional_linspace:
        grid = np.linspace(0, num_train - 1, m).astype(np.float32)  # [m]
    else:
        grid = np.linspace(0, num_train - 1, m).round()  # [m]
    return grid[::-1][:n].astype(np.float64)


def _discrete_timesteps(
    n: int, process: Process, spacing: str, steps_offset: int, convention: str
) -> np.ndarray:
    """Checked descending timesteps `[n]` (float64) of a diffusers spacing for `process`."""
    _check_n(n)
    if not isinstance(process, VPDiscrete):
        raise UserError(
            f"discrete timestep schedules need a VPDiscrete process; got {type(process).__name__}"
        )
    check_choice("spacing", spacing, SPACINGS)
    check_choice("convention", convention, DISCRETE_CONVENTIONS)
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise UserError(f"steps_offset={steps_offset!r} must be a non-negative integer")
    num_train = process.num_train_timesteps
    ts = _spaced_grid(n, num_train, spacing, steps_offset, DISCRETE_CONVENTIONS[convention])
    where = f"{spacing!r} spacing ({convention!r} convention) with n={n}"
    if ts.shape[0] != n or ts[-1] < 0:
        raise UserError(
            f"{where} gives {ts.shape[0]} timesteps ending at {ts[-1]:g} in diffusers "
            "(float rounding in its trailing grid); use another n or spacing"
        )
    if np.any(np.diff(ts) >= 0):
        raise UserError(
            f"{where} repeats timesteps: too many steps for num_train_timesteps={num_train}"
        )
    if ts[0] > num_train - 1:
        raise UserError(
            f"{where} and steps_offset={steps_offset} starts at timestep {ts[0]:g} > "
            f"num_train_timesteps - 1 = {num_train - 1}"
        )
    return ts


def discrete_timesteps(
    n: int,
    process: Process,
    spacing: str = "leading",
    steps_offset: int = 0,
    convention: str = "ddim",
) -> jax.Array:
    """The timesteps `[n]` (float32, descending) at which a diffusers scheduler evaluates a
    `VPDiscrete` model, as its `set_timesteps(n)` computes them: the network conditioning that
    goes with `discrete(n, process, spacing, steps_offset, convention)`.

    Integer-valued, except "linspace" spacing in the "euler" convention, which keeps diffusers'
    float32 fractional timesteps. See `discrete` for the options.
    """
    ts = _discrete_timesteps(n, process, spacing, steps_offset, convention)
    return jnp.asarray(ts, jnp.float32)


def discrete(
    n: int,
    process: Process,
    spacing: str = "leading",
    steps_offset: int = 0,
    convention: str = "ddim",
    final_sigma: str = "zero",
) -> jax.Array:
    """Sigmas of a `VPDiscrete` model at the timesteps of diffusers' `set_timesteps(n)`, then the
    final sigma. `[n + 1]`; the defaults reproduce `DDIMScheduler`'s defaults.

    `spacing` is diffusers' `timestep_spacing` (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sampling Steps Are Flawed", Table 2), with T = `num_train_timesteps`:
    "leading" `arange(n) * (T // n) + steps_offset`, "trailing" `round(arange(T, 0, -T / n)) - 1`,
    "linspace" `linspace(0, T - 1, n)`, all descending. `steps_offset` applies to "leading" only,
    as in diffusers. `convention` names the scheduler family whose `set_timesteps` is followed:

    - "ddim": `DDIMScheduler`, `DDPMScheduler`, `PNDMScheduler`; "linspace" rounds to integers.
    - "euler": `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`,
      `HeunDiscreteScheduler`, `LMSDiscreteScheduler`, `KDPM2DiscreteScheduler`; "linspace" keeps
      fractional timesteps, whose sigma is interpolated linearly in the timestep.
    - "dpmsolver": `DPMSolverMultistepScheduler`, `DPMSolverSinglestepScheduler` (which has only
      "linspace"), `DEISMultistepScheduler`, `UniPCMultistepScheduler`; "leading" and "linspace"
      lay out n + 1 timesteps and drop the lowest ("leading": `T // (n + 1)` apart).

    Sigma at timestep t is `sqrt((1 - alpha_bar_t) / alpha_bar_t)`, interpolated linearly between
    integer timesteps (diffusers' `np.interp` of its sigma table). `final_sigma` is "zero" (DDPM,
    DDIM with `set_alpha_to_one=True`, the Euler family, `final_sigmas_type="zero"`) or
    "sigma_min", the sigma at timestep 0 (PNDM and DDIM with `set_alpha_to_one=False`, DEIS,
    `final_sigmas_type="sigma_min"`). `DDIMScheduler.step` and `PNDMScheduler.step_plms` step
    from t to `t - T // n`, which is the next timestep here only for "leading", and for
    "trailing" when n divides T; with other spacings diffusers' DDIM/PNDM evaluates the model at
    these timesteps but lands elsewhere between them.

    Settings where diffusers' schedule is not strictly descending raise `UserError`: too many
    steps for T (repeated timesteps), "trailing" grids that float rounding lengthens to n + 1
    timesteps ending at -1 (e.g. T = 1000, n = 61), and "sigma_min" after a last timestep of 0,
    which repeats the last sigma and makes the final step a no-op (as diffusers #6477 found in
    `DPMSolverMultistepScheduler`).
    """
    check_choice("final_sigma", final_sigma, FINAL_SIGMAS)
    ts = _discrete_timesteps(n, process, spacing, steps_offset, convention)
    if final_sigma == "sigma_min" and ts[-1] == 0:
        raise UserError(
            f"final_sigma='sigma_min' after {spacing!r} spacing, whose last timestep is 0, "
            "repeats the last sigma; use final_sigma='zero', or a spacing ending above timestep 0"
        )
    table = process.sigmas  # [T], ascending in t
    sigmas = np.interp(ts, np.arange(table.shape[0]), table)  # [n]
    return _append_final(sigmas, table[0] if final_sigma == "sigma_min" else 0.0)


SCHEDULES: dict[str, Callable[..., jax.Array]] = {
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "logsnr_uniform": logsnr_uniform,
    "vp_uniform_time": vp_uniform_time,
    "linspace": linspace,
    "discrete": discrete,
    "flow_match": flow_match,
    "flow_solver": flow_solver,
}


def make_sigmas(name: str, n: int, process: Process, **options: Any) -> jax.Array:
    """Sampling sigmas `[n + 1]` from the schedule `name` for `process`.

    `sigma_min` / `sigma_max` default to the process's range; other options go to the schedule
    function: `rho` ("karras", "polyexponential"), `beta_d`, `beta_min`, `eps_s`
    ("vp_uniform_time"), `spacing`, `steps_offset`, `convention`, `final_sigma` ("discrete"),
    `shift`, `mu`, `time_shift_type`, `shift_terminal`, `spacing` / `convention`,
    `num_train_timesteps` ("flow_match" / "flow_solver", which take no sigma range).
    """
    check_choice("schedule", name, SCHEDULES)
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
    sigmas = fn(n, **kwargs)
    if process.input_scale_at_infinity is None and not np.isfinite(sigmas[0]):
        raise UserError(
            f"sigma schedule {name!r} starts at sigma = inf (t = 1), where a "
            f"{type(process).__name__} process has no finite network input; accepted: a flow "
            "process (rectified_flow)"
        )
    return sigmas
