"""Compare samplers exactly on Gaussian-mixture data (no trained model): coupled error to the
float64 reference PF-ODE solution, distribution metrics, and diffusers' schedulers beside their
jaxdiff twins, on Stable Diffusion's noise schedule.

jaxdiff compare-samplers --config configs/compare_samplers_gmm.py --out runs/compare_gmm
jaxdiff compare-samplers --config configs/compare_samplers_gmm.py:tiny --out /tmp/cmp  # seconds
"""

from __future__ import annotations

import ml_collections

from . import common

# jaxdiff samplers run on each schedule: deterministic solvers by order, the adaptive one, then
# the stochastic ones on one Brownian path per seed (so they converge as the steps grow).
SAMPLERS = (
    "euler",
    "heun",
    "dpm_2",
    "dpmpp_2m",
    "dpm_solver",
    "plms",
    "unipc",
    "deis",
    "dpmpp_3m",
    "unipc:order=3",
    "lms",
    "ipndm",
    "dpm_adaptive",
    "euler_ancestral:noise=brownian",
    "dpm_2_ancestral:noise=brownian",
    "dpmpp_2s_ancestral:noise=brownian",
    "dpmpp_sde:noise=brownian",
    "dpmpp_2m_sde:noise=brownian",
    "dpmpp_3m_sde:noise=brownian",
)

# Every run starts from the exact flow at its first sigma, so a schedule that starts lower
# ("leading" spacing: sigma 8.4 instead of 14.6 at 10 steps) would skip its first stretch for
# free. The schedulers therefore use "trailing" spacing, which starts at the top; DDIM and PNDM
# keep SD's "leading" spacing, the only one on which their steps are self-consistent (diffusers
# #11347), and start lower.
_TRAILING = "timestep_spacing=trailing"
_LEADING = "steps_offset=1,set_alpha_to_one=True"


def _discrete(convention: str, spacing: str = "trailing", final: str = "zero") -> str:
    return (
        f"discrete:spacing={spacing},steps_offset={int(spacing == 'leading')},"
        f"convention={convention},final_sigma={final}"
    )


# (diffusers scheduler spec, jaxdiff twin sampler, jaxdiff schedule taking the same steps). The
# deterministic schedulers only: a stochastic one's coupled error depends on its noise draws.
DIFFUSERS = (
    (f"EulerDiscreteScheduler:{_TRAILING}", "euler", _discrete("euler")),
    (f"HeunDiscreteScheduler:{_TRAILING}", "heun", _discrete("euler")),
    (f"KDPM2DiscreteScheduler:{_TRAILING}", "dpm_2", _discrete("euler")),
    (f"LMSDiscreteScheduler:{_TRAILING}", "lms", _discrete("euler")),
    (f"DPMSolverMultistepScheduler:{_TRAILING}", "dpmpp_2m", _discrete("dpmsolver")),
    (f"DPMSolverMultistepScheduler:solver_order=3,{_TRAILING}", "dpmpp_3m", _discrete("dpmsolver")),
    (
        "DPMSolverSinglestepScheduler",
        "dpm_solver",
        "discrete:spacing=linspace,convention=dpmsolver",
    ),
    (f"UniPCMultistepScheduler:{_TRAILING}", "unipc", _discrete("dpmsolver")),
    (f"DEISMultistepScheduler:{_TRAILING}", "deis", _discrete("dpmsolver", final="sigma_min")),
    (f"DDIMScheduler:{_LEADING}", "ddim", _discrete("ddim", "leading")),
    (f"PNDMScheduler:skip_prk_steps=True,{_LEADING}", "plms", _discrete("ddim", "leading")),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    return ml_collections.ConfigDict(
        {
            "problem": "mixtures",
            "process": {"name": "vp_discrete"},
            "mixtures": {
                # Overlapping modes: a smooth PF-ODE where the solvers' orders show.
                "smooth": {
                    "dim": 4,
                    "components": 6,
                    "spread": 1.0,
                    "component_std": 0.4,
                    "seed": 0,
                },
                # Narrow, well-separated modes: a stiff ODE near sigma = 0.
                "sharp": {
                    "dim": 4,
                    "components": 6,
                    "spread": 1.0,
                    "component_std": 0.05,
                    "seed": 1,
                },
            },
            "num_samples": 256 if tiny else 1000,
            "seeds": 1 if tiny else 3,
            "reference_rtol": 1e-8 if tiny else 1e-10,
            "projections": 64 if tiny else 256,
            "nfe": (5, 10) if tiny else (5, 10, 20, 50),
            "samplers": SAMPLERS[:2] if tiny else SAMPLERS,
            "schedules": ("karras",) if tiny else ("karras", "exponential", _discrete("euler")),
            "adaptive_rtols": (1e-2,) if tiny else (1e-2, 1e-3, 1e-4),
            "diffusers": DIFFUSERS[:1] if tiny else DIFFUSERS,
        }
    )
