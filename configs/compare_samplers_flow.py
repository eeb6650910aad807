"""Compare samplers exactly on Gaussian mixtures under the rectified-flow process: runs start at
t = 1 (sigma = inf) on diffusers' flow-matching grids, beside diffusers' flow schedulers (their
jaxdiff twins on the same grids). The report also gives how much the exact trajectories bend in
flow and in VP coordinates.

jaxdiff compare-samplers --config configs/compare_samplers_flow.py --out runs/compare_flow
jaxdiff compare-samplers --config configs/compare_samplers_flow.py:tiny --out /tmp/cmp  # seconds
"""

from __future__ import annotations

import ml_collections

from . import common
from .compare_samplers_gmm import get_config as gmm_config

# The samplers that start at sigma = inf (`jaxdiff.samplers.starts_at_infinity`); the stochastic
# ones on independent noise, since a Brownian path needs a finite start.
SAMPLERS = (
    "euler",
    "flow_heun",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "dpm_solver",
    "deis",
    "lms",
    "ipndm",
    "ddim",
    "euler_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
)

# No shift, and SD3's shift of 3 (more steps at high noise).
SCHEDULES = ("flow_match:shift=1.0", "flow_match:shift=3.0")

# (diffusers scheduler spec, jaxdiff twin sampler, jaxdiff schedule taking the same steps).
_FLOW = "prediction_type=flow_prediction,use_flow_sigmas=True,flow_shift=3.0"
DIFFUSERS = (
    ("FlowMatchEulerDiscreteScheduler:shift=3.0", "euler", "flow_match:shift=3.0"),
    ("FlowMatchHeunDiscreteScheduler:shift=3.0", "flow_heun", "flow_match:shift=3.0"),
    (
        f"DPMSolverMultistepScheduler:{_FLOW}",
        "dpmpp_2m:lower_order_final=True",
        "flow_solver:shift=3.0,convention=dpmsolver",
    ),
    (f"UniPCMultistepScheduler:{_FLOW}", "unipc", "flow_solver:shift=3.0,convention=unipc"),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    config = gmm_config(arg)
    config.process = {"name": "rectified_flow"}
    config.samplers = SAMPLERS[:2] if tiny else SAMPLERS
    config.schedules = SCHEDULES[1:] if tiny else SCHEDULES
    config.diffusers = DIFFUSERS[1:2] if tiny else DIFFUSERS
    return config
