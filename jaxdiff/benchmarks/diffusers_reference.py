"""diffusers schedulers run on an analytic denoiser, as the reference a jaxdiff sampler is
compared with (torch and diffusers, from the `test` extra, imported only when a scheduler is made
or run).

The denoiser `D(x, sigma)` is wrapped as an eps-predicting discrete VP model. A diffusers scheduler
holds either the VP state `z = x / sqrt(1 + sigma^2)` (DDIM, DDPM, PNDM, DEIS, UniPC, DPM-Solver:
`init_noise_sigma == 1`) or the VE state `x` itself (the k-diffusion ports: Euler, Heun, LMS,
KDPM2). Either way the model sees `scale_model_input(state, t) = z` and the timestep t; the wrapper
maps t to sigma through the scheduler's own `alphas_cumprod` (interpolating log sigma at fractional
t, as diffusers' `_sigma_to_t` does), forms `x = z * sqrt(1 + sigma^2)` and returns
`eps = (x - D(x, sigma)) / sigma`, all in float64.

A flow scheduler (`FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler`, DPM-Solver
or UniPC with `use_flow_sigmas`) holds `x_t` and sees the denoiser as a velocity model
(`VelocityModel`, `run_flow_scheduler`), from t = 1 (sigma = inf) where it starts there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from jaxdiff.diffusion.flow_schedules import times_to_sigmas
from jaxdiff.errors import UserError
from jaxdiff.extras import import_optional

# D(x [B, d] float64, sigma) -> x0_hat [B, d] float64
NumpyDenoise = Callable[[np.ndarray, float], np.ndarray]

# Stable Diffusion's noise schedule, the setting every scheduler is built with by default.
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

# Model calls per step of the two-stage schedulers (the last step, into sigma = 0, makes one).
_TWO_STAGE = (
    "HeunDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSDEScheduler",
)


# What the reference libraries are needed for, in the error that says they are missing.
PURPOSE = "comparing with diffusers schedulers"


def reference_library(name: str) -> ModuleType:
    """`torch` or `diffusers`, or a one-line UserError naming the extra that installs it."""
    return import_optional(name, PURPOSE)


def make_scheduler(name: str, **options: Any):
    """The diffusers scheduler class `name` (e.g. "DDIMScheduler") with SD's noise schedule and
    no clipping of x0, updated by `options` (its own config arguments)."""
    cls = getattr(reference_library("diffusers"), name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise UserError(f"unknown diffusers scheduler {name!r}; expected a diffusers *Scheduler")
    params = inspect.signature(cls).parameters
    # SD's configs turn off the clipping of x0 to [-1, 1] that DDIM / DDPM default to; the
    # flow-matching schedulers have no beta schedule.
    unclipped = {"clip_sample": False} if "clip_sample" in params else {}
    schedule = {k: v for k, v in SD_SCHEDULE.items() if k in params}
    try:
        return cls(**(schedule | unclipped | options))
    except TypeError as error:
        raise UserError(f"diffusers {name} rejects options {options}: {error}") from error


def evals_per_step(name: str) -> int:
    """Model calls one step of the diffusers scheduler `name` makes."""
    return 2 if name in _TWO_STAGE else 1


def sigma_at(scheduler, t: float) -> float:
    """The scheduler's sigma at (possibly fractional) timestep t."""
    ac = np.asarray(scheduler.alphas_cumprod, np.float64)
    log_sigmas = 0.5 * np.log((1.0 - ac) / ac)  # [T]
    return float(np.exp(np.interp(float(t), np.arange(log_sigmas.shape[0]), log_sigmas)))


def final_sigma(scheduler) -> float:
    """The noise level a scheduler's last step lands on (after `set_timesteps`): 0, or the
    trained model's smallest sigma (DDIM / PNDM without `set_alpha_to_one`, DEIS,
    `final_sigmas_type="sigma_min"`)."""
    if hasattr(scheduler, "final_alpha_cumprod"):
        ac = float(scheduler.final_alpha_cumprod)
        return float(np.sqrt((1.0 - ac) / ac))
    if hasattr(scheduler, "sigmas"):
        return float(scheduler.sigmas[-1])
    return 0.0


def scheduler_sigmas(scheduler, final_sigma: float = 0.0) -> np.ndarray:
    """sigma at each of the scheduler's timesteps (after `set_timesteps`), then `final_sigma`.
    [n + 1]"""
    sigmas = [sigma_at(scheduler, t) for t in np.asarray(scheduler.timesteps, np.float64)]
    return np.asarray([*sigmas, final_sigma], np.float64)


class EpsModel:
    """`model(z [B, d] torch, t) -> eps [B, d] torch` from a float64 denoiser, recording the sigma
    of every call in `self.sigmas`."""

    def __init__(self, scheduler, denoise: NumpyDenoise):
        self.scheduler = scheduler
        self.denoise = denoise
        self.sigmas: list[float] = []

    def __call__(self, z, t):
        torch = reference_library("torch")
        sigma = sigma_at(self.scheduler, float(t))
        self.sigmas.append(sigma)
        x = z.double().numpy() * np.sqrt(1.0 + sigma**2)
        return torch.from_numpy((x - self.denoise(x, sigma)) / sigma)


def run_scheduler(
    scheduler,
    denoise: NumpyDenoise,
    x: np.ndarray,
    sigma_start: float,
    sigma_end: float,
    step_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Run the denoising loop of a scheduler whose `set_timesteps` has been called, from the VE
    sample `x [B, d]` at `sigma_start` (float64). Returns the final sample in VE form at
    `sigma_end` and the sigma of every model call.

    `step_kwargs` go to `scheduler.step` (a torch `generator`, DDIM's `eta`, ...)."""
    torch = reference_library("torch")
    ve_state = float(scheduler.init_noise_sigma) != 1.0
    state = x if ve_state else x / np.sqrt(1.0 + sigma_start**2)
    sample = torch.from_numpy(np.array(state, np.float64))
    model = EpsModel(scheduler, denoise)
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(eps, t, sample, **(step_kwargs or {}), return_dict=False)[0]
    out = sample.double().numpy()
    return (out if ve_state else out * np.sqrt(1.0 + sigma_end**2)), model.sigmas


def is_flow(scheduler) -> bool:
    """Whether the scheduler samples a flow-matching model (it holds `x_t` and its "sigmas"
    are flow times)."""
    name = type(scheduler).__name__
    return name.startswith("FlowMatch") or bool(getattr(scheduler.config, "use_flow_sigmas", 0))


def flow_call_sigmas(scheduler) -> np.ndarray:
    """The sigma `t / (1 - t)` of each model call of a flow scheduler (after `set_timesteps`;
    inf at t = 1), then 0. [calls + 1]"""
    times = np.asarray(scheduler.sigmas, np.float64)[: len(scheduler.timesteps)]
    return times_to_sigmas(times)


class VelocityModel:
    """`model(x_t [B, d] torch, timestep) -> v [B, d] torch`: a flow-matching model from a
    float64 denoiser. The scheduler's call `i` is at flow time `scheduler.sigmas[i]` (diffusers'
    flow schedulers name times "sigmas"); there `x = x_t / (1 - t)` at `sigma = t / (1 - t)`, or
    at t = 1 the state `x_t` at sigma = inf, and `v = eps_hat - D`. Records every call's time in
    `self.times`."""

    def __init__(self, scheduler, denoise: NumpyDenoise):
        self.scheduler = scheduler
        self.denoise = denoise
        self.times: list[float] = []

    def __call__(self, x_t, timestep):
        torch = reference_library("torch")
        t = float(self.scheduler.sigmas[len(self.times)])
        self.times.append(t)
        state = x_t.double().numpy()
        if t == 1.0:
            return torch.from_numpy(state - self.denoise(state, np.inf))
        sigma = t / (1.0 - t)
        x = state / (1.0 - t)
        denoised = self.denoise(x, sigma)
        return torch.from_numpy((x - denoised) / sigma - denoised)


def run_flow_scheduler(
    scheduler,
    denoise: NumpyDenoise,
    x_t: np.ndarray,
    step_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Run the denoising loop of a flow scheduler (`FlowMatchEulerDiscreteScheduler`,
    `FlowMatchHeunDiscreteScheduler`, or DPM-Solver / UniPC with `use_flow_sigmas`) whose
    `set_timesteps` has been called, from `x_t [B, d]` (float64). Returns the final `x_t` (at
    t = 0, the sample) and the flow time of every model call."""
    torch = reference_library("torch")
    sample = torch.from_numpy(np.array(x_t, np.float64))
    model = VelocityModel(scheduler, denoise)
    for t in scheduler.timesteps:
        output = model(sample, t)
        sample = scheduler.step(output, t, sample, **(step_kwargs or {}), return_dict=False)[0]
    return sample.double().numpy(), model.times
