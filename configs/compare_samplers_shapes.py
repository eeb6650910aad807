"""Compare samplers on the trained shapes text-to-image model of `make demo`: coupled latent
error to a high-NFE reference from the same noise, and shapes prompt adherence.

jaxdiff compare-samplers --config configs/compare_samplers_shapes.py --workdir runs/demo/t2i \
    --out runs/compare_shapes
"""

from __future__ import annotations

import ml_collections

from . import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    return ml_collections.ConfigDict(
        {
            "problem": "model",
            "samplers": ("euler", "heun")
            if tiny
            else (
                "euler",
                "heun",
                "dpm_2",
                "lms",
                "ipndm",
                "deis",
                "dpmpp_2m",
                "dpmpp_3m",
                "unipc",
                "euler_ancestral",
                "dpmpp_2m_sde",
            ),
            "schedules": ("karras",),
            "nfe": (4,) if tiny else (5, 10, 20, 50),
            "reference": "heun",
            "reference_steps": 8 if tiny else 200,
            "prompts": 6 if tiny else 90,
            "seed": 0,
            "guidance": 3.0,
        }
    )
