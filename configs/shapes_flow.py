"""The shapes text-to-image model trained by flow matching: the same UNet, text encoder and data
as ``shapes_t2i.py``, a rectified-flow process (SD3's logit-normal training times) and a
velocity-predicting network in place of EDM.

    jaxdiff train --config configs/shapes_flow.py --workdir runs/shapes_flow \\
        --config.vae_workdir=runs/shapes_vae
    jaxdiff train --config configs/shapes_flow.py:tiny --workdir /tmp/flow_tiny   # pixels
"""

from __future__ import annotations

import ml_collections

from . import shapes_t2i


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = shapes_t2i.get_config(arg)
    config.diffusion = ml_collections.ConfigDict(
        {
            "process": "rectified_flow",
            "process_options": {"time_sampling": "logit_normal", "logit_mean": 0.0, "shift": 1.0},
            "parameterization": "velocity",
            "weighting": "uniform",  # the flow-matching loss: mean squared velocity error
            "min_snr_gamma": 5.0,
        }
    )
    return config
