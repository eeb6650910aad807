"""Samplers over the denoiser `D(x, sigma) -> x0_hat`, and guidance transforms of it.

`get(name)` returns a registered sampler `fn(denoise, x, sigmas, key=None, **options) -> x`;
`names()` lists them. Each sampler module registers its samplers on import (see `base.py`).
"""

from jaxdiff.samplers import ancestral, dpm_solver, dpm_solver_sde, multistep, ode, unipc
from jaxdiff.samplers.base import (
    Denoise,
    Sampler,
    check_option,
    check_sigmas,
    evals_per_step,
    get,
    is_stochastic,
    names,
    option_defaults,
    register,
)
from jaxdiff.samplers.guidance import cfg
from jaxdiff.samplers.noise import NOISE_KINDS, make_noise

__all__ = [
    "NOISE_KINDS",
    "Denoise",
    "Sampler",
    "ancestral",
    "cfg",
    "check_option",
    "check_sigmas",
    "dpm_solver",
    "dpm_solver_sde",
    "evals_per_step",
    "get",
    "is_stochastic",
    "make_noise",
    "multistep",
    "names",
    "ode",
    "option_defaults",
    "register",
    "unipc",
]
