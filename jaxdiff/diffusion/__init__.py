"""The diffusion core: processes, noise schedules, parameterizations, losses (pure JAX).

Everything is in "variance exploding" form `x = x0 + sigma * eps`, and meets at the denoiser
`D(x, sigma, *cond) -> x0_hat` (Karras et al. 2022).
"""

from jaxdiff.diffusion.denoiser import Denoiser, Diffusion, Network
from jaxdiff.diffusion.flow_schedules import flow_match, flow_solver
from jaxdiff.diffusion.losses import WEIGHTINGS
from jaxdiff.diffusion.parameterization import (
    PARAMETERIZATIONS,
    eps_to_x0,
    network_target,
    scalings,
    v_to_x0,
    x0_to_eps,
    x0_to_v,
)
from jaxdiff.diffusion.processes import (
    EDM,
    PROCESSES,
    VE,
    Process,
    RectifiedFlow,
    VPCosine,
    VPDiscrete,
    make_process,
)
from jaxdiff.diffusion.schedules import (
    SCHEDULES,
    discrete,
    discrete_timesteps,
    exponential,
    karras,
    logsnr_uniform,
    make_sigmas,
    polyexponential,
    vp_uniform_time,
)

__all__ = [
    "EDM",
    "PARAMETERIZATIONS",
    "PROCESSES",
    "SCHEDULES",
    "VE",
    "WEIGHTINGS",
    "Denoiser",
    "Diffusion",
    "Network",
    "Process",
    "RectifiedFlow",
    "VPCosine",
    "VPDiscrete",
    "discrete",
    "discrete_timesteps",
    "eps_to_x0",
    "exponential",
    "flow_match",
    "flow_solver",
    "karras",
    "logsnr_uniform",
    "make_process",
    "make_sigmas",
    "network_target",
    "polyexponential",
    "scalings",
    "v_to_x0",
    "vp_uniform_time",
    "x0_to_eps",
    "x0_to_v",
]
