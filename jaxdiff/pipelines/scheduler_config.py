"""What a model's `scheduler/scheduler_config.json` says, and the sampling grid it implies for any
sampler of the zoo.

A diffusers scheduler config describes the trained model (its discrete VP process and what the
network predicts) and a sampling recipe (timestep spacing, steps offset, where the last step
lands, Karras sigmas, clipping or thresholding of x0). `SchedulerConfig.from_dict` reads it for
every scheduler class that shares those fields, and `SchedulerConfig.grid` gives the sigmas a
jaxdiff sampler runs along: the grid of the diffusers scheduler that implements the same
algorithm, so that with the same model the two give the same images.

Each sampler has a diffusers counterpart (`COUNTERPARTS`), which follows one of diffusers' three
`set_timesteps` conventions (see `jaxdiff.diffusion.schedules.discrete`):

- "ddim" (DDIMScheduler, DDPMScheduler, PNDMScheduler): integer timesteps; the last step lands
  on the sigma of timestep 0 unless `set_alpha_to_one` (DDPM always lands on 0).
- "euler" (Euler, Euler ancestral, Heun, LMS, KDPM2 and the other k-diffusion samplers): the
  network sees the fractional timestep of each sigma; Karras sigmas span the spaced grid.
- "dpmsolver" (DPMSolverMultistep, UniPC, DEIS): `n + 1` points laid out and the lowest dropped;
  Karras sigmas span the whole training range and their timesteps are rounded to integers.

A config field it lacks takes the default of the counterpart's class, as
`Scheduler.from_config(config)` does in diffusers: SD 1.5's config, written for PNDM, has no
`timestep_spacing`, so DDIM and PNDM space "leading" and the Euler and DPM-Solver schedulers
"linspace". Clipping and thresholding of x0 apply where the counterpart applies them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.processes import VPDiscrete
from jaxdiff.diffusion.schedules import discrete, discrete_timesteps, karras
from jaxdiff.errors import UserError, require
from jaxdiff.pipelines.base import Grid, Sampling

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SIGMA_SCHEDULES = ("discrete", "karras")


@dataclasses.dataclass(frozen=True)
class Counterpart:
    """What the diffusers scheduler that implements a sampler does with a config.

    `convention`: its `set_timesteps` family. `final`: where its last step lands, "zero",
    "sigma_min", or "alpha_to_one" (0 if the config's `set_alpha_to_one`, else the sigma of
    timestep 0), with `alpha_to_one` the class's default. `clip`: its `clip_sample` default, None
    if it never clips; `threshold`: whether it honours `thresholding`; `karras`: whether it
    honours `use_karras_sigmas`.
    """

    convention: str
    final: str = "zero"
    alpha_to_one: bool = True
    clip: bool | None = None
    threshold: bool = False
    karras: bool = True


_DPM = Counterpart("dpmsolver", threshold=True)
_PNDM = Counterpart("ddim", "alpha_to_one", alpha_to_one=False, karras=False)
# Samplers not listed follow k-diffusion, as diffusers' Euler, LMS and KDPM2 schedulers do.
COUNTERPARTS: dict[str, Counterpart] = {
    "ddim": Counterpart("ddim", "alpha_to_one", clip=True, threshold=True, karras=False),
    "ddpm": Counterpart("ddim", clip=True, threshold=True, karras=False),
    "plms": _PNDM,
    "pndm": _PNDM,
    "heun": Counterpart("euler", clip=False),
    "dpm_solver": _DPM,
    "dpmpp_2m": _DPM,
    "dpmpp_2m_sde": _DPM,
    "dpmpp_3m": _DPM,
    "dpmpp_3m_sde": _DPM,
    "unipc": _DPM,
    "deis": Counterpart("dpmsolver", "sigma_min", threshold=True),
}
_K_DIFFUSION = Counterpart("euler")
# The spacing each diffusers family defaults to when a config does not name one (SD 1.x's does
# not): DDIM / DDPM / PNDM lay out "leading" timesteps, the others "linspace".
DEFAULT_SPACINGS = {"ddim": "leading", "euler": "linspace", "dpmsolver": "linspace"}

# Fields that change the model or the recipe in ways jaxdiff does not implement, with the value
# that is safe.
_UNSUPPORTED = {
    "rescale_betas_zero_snr": False,
    "trained_betas": None,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "timestep_type": "discrete",
}


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The sampling-relevant fields of a diffusers scheduler config."""

    process: VPDiscrete
    parameterization: str
    timestep_spacing: str | None = None  # None: each diffusers class's default
    steps_offset: int = 0
    set_alpha_to_one: bool | None = None  # None: each diffusers class's default
    use_karras_sigmas: bool = False
    clip_sample: bool | None = None  # None: each diffusers class's default
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SchedulerConfig:
        """Read a `scheduler_config.json` dict; a value jaxdiff cannot follow is a `UserError`."""
        get = config.get
        name = get("_class_name", "scheduler config")
        for key, safe in _UNSUPPORTED.items():
            if get(key, safe) not in (safe, None):
                raise UserError(f"{name}: {key}={get(key)!r} is not supported; accepted: {safe!r}")
        prediction = get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise UserError(
                f"{name}: prediction_type={prediction!r}; accepted: {', '.join(PREDICTION_TYPES)}"
            )
        process = VPDiscrete(
            beta_schedule=get("beta_schedule", "linear"),
            beta_start=float(get("beta_start", 0.0001)),
            beta_end=float(get("beta_end", 0.02)),
            num_train_timesteps=get("num_train_timesteps", 1000),
        )
        return cls(
            process=process,
            parameterization=PREDICTION_TYPES[prediction],
            timestep_spacing=get("timestep_spacing"),
            steps_offset=get("steps_offset", 0) or 0,
            set_alpha_to_one=get("set_alpha_to_one"),
            use_karras_sigmas=bool(get("use_karras_sigmas", False)),
            clip_sample=get("clip_sample"),
            clip_sample_range=float(get("clip_sample_range", 1.0)),
            thresholding=bool(get("thresholding", False)),
            dynamic_thresholding_ratio=float(get("dynamic_thresholding_ratio", 0.995)),
            sample_max_value=float(get("sample_max_value", 1.0)),
        )

    def x0_limits(self, sampler: str) -> tuple[float | None, tuple[float, float] | None]:
        """`(clip range or None, (ratio, max value) or None)`: the clipping or dynamic
        thresholding of x0 that `sampler`'s diffusers counterpart applies with this config
        (thresholding wins over clipping, as in diffusers)."""
        counterpart = COUNTERPARTS.get(sampler, _K_DIFFUSION)
        if self.thresholding and counterpart.threshold:
            return None, (self.dynamic_thresholding_ratio, self.sample_max_value)
        clips = counterpart.clip if self.clip_sample is None else self.clip_sample
        if counterpart.clip is not None and clips:
            return self.clip_sample_range, None
        return None, None

    def call_grid(self, sampling: Sampling) -> Grid:
        """The grid of a pipeline call: its sampler, step count and `sigma_schedule`, which
        takes no options."""
        require(
            not sampling.sigma_schedule_options,
            "sigma_schedule_options: a scheduler config's sigma schedules take none "
            "(sigma_schedule: None, 'discrete' or 'karras')",
        )
        return self.grid(sampling.sampler, sampling.num_inference_steps, sampling.sigma_schedule)

    def grid(self, sampler: str, n: int, sigma_schedule: str | None = None) -> Grid:
        """The sigmas `sampler` runs along for `n` steps and how, as the matching diffusers
        scheduler has them; `sigma_schedule` is "discrete" (the spaced training timesteps),
        "karras", or None for the config's `use_karras_sigmas` (where the diffusers counterpart
        honours it).

        diffusers' VP schedulers start from unit noise in their state `x / sqrt(1 + sigma^2)`,
        which is noise of std `sqrt(1 + sigma_0^2)` in `x`; its Euler family does the same for
        "leading" spacing (`init_noise_sigma`) and starts from std `sigma_0` otherwise. Where the
        grid ends above 0, diffusers returns that VP state.
        """
        counterpart = COUNTERPARTS.get(sampler, _K_DIFFUSION)
        schedule = sigma_schedule or (
            "karras" if self.use_karras_sigmas and counterpart.karras else "discrete"
        )
        if schedule not in SIGMA_SCHEDULES:
            raise UserError(
                f"unknown sigma_schedule {schedule!r}; accepted: {', '.join(SIGMA_SCHEDULES)}"
            )
        convention = counterpart.convention
        spacing = self.timestep_spacing or DEFAULT_SPACINGS[convention]
        spaced = np.asarray(
            discrete(n, self.process, spacing, self.steps_offset, convention)
        )  # [n + 1], ending at 0
        if schedule == "karras":
            low, high = (
                (float(spaced[-2]), float(spaced[0]))
                if convention == "euler"
                else (self.process.sigma_min, self.process.sigma_max)
            )
            # Karras grids end at 0: their last positive sigma is already the lowest level.
            sigmas = np.asarray(karras(n, low, high)) if low < high else spaced
            if counterpart.final == "sigma_min" and n > 1:
                sigmas = sigmas[:-1]  # diffusers repeats the last sigma: a no-op last step
        else:
            sigmas = self._final(spaced, counterpart)
        top = float(sigmas[0])
        unit_state = convention != "euler" or spacing == "leading"
        clip_range, threshold = self.x0_limits(sampler)
        steps = sigmas.shape[0] - 1
        if schedule == "karras":  # diffusers' `_sigma_to_t`, interpolated in log sigma
            timesteps = np.asarray(self.process.sigma_to_t(np.asarray(sigmas[:-1], np.float64)))
            timesteps = timesteps if convention == "euler" else np.round(timesteps)
        else:
            spaced_timesteps = discrete_timesteps(
                n, self.process, spacing, self.steps_offset, convention
            )
            timesteps = np.asarray(spaced_timesteps, np.float64)[:steps]
        return Grid(
            sigmas=sigmas,
            start_std=(1.0 + top**2) ** 0.5 if unit_state else top,
            integer_timesteps=convention != "euler",
            end_scale=float(self.process.c_in(jnp.float32(sigmas[-1]))),
            clip_sample_range=clip_range,
            threshold=threshold,
            timesteps=timesteps,
            vp_state=convention != "euler",
        )

    def _final(self, spaced: np.ndarray, counterpart: Counterpart) -> np.ndarray:
        """The spaced sigmas `[n + 1]` with the last step landing where the counterpart's does.
        Where the last timestep is 0 and the step would land on its own sigma, diffusers' last
        step is a no-op: the grid ends there instead, one step shorter."""
        alpha_to_one = (
            counterpart.alpha_to_one if self.set_alpha_to_one is None else self.set_alpha_to_one
        )
        if counterpart.final == "zero" or (counterpart.final == "alpha_to_one" and alpha_to_one):
            return spaced
        sigma_min = self.process.sigma_min
        if np.isclose(spaced[-2], sigma_min, rtol=1e-6):
            if spaced.shape[0] == 2:
                raise UserError(
                    "one step from timestep 0 to its own noise level does nothing; use more "
                    "steps or a spacing that starts higher"
                )
            return spaced[:-1]
        return np.append(spaced[:-1], np.float32(sigma_min))
