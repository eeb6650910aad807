"""A ControlNet for the shapes text-to-image model, steered by each shape's filled mask.

The base is a trained run of ``configs/shapes_t2i.py`` (the demo's, ``runs/demo/t2i``), frozen:
the config repeats its architecture and noise process (checked against the run's). Each example
of the embedded ``shapes`` data carries its shape's silhouette in place (``data.conditioning``:
"mask" or "edges"); only the ControlNet, a copy of the UNet's encoder, trains. The ``tiny``
variant adapts ``shapes_t2i.py:tiny`` (pixels, no autoencoder) in the tests.

    make demo
    jaxdiff train --config configs/shapes_controlnet.py --workdir runs/demo/controlnet \\
        --config.base_workdir=runs/demo/t2i
    jaxdiff sample --workdir runs/demo/controlnet --control-image mask.png \\
        --prompt "a red circle in the top left corner"
    python experiments/shapes_controlnet.py --workdir runs/demo   # trains it and measures
"""

from __future__ import annotations

import ml_collections

from . import common, shapes_t2i


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = shapes_t2i.adapting(arg, "controlnet")
    tiny = arg == "tiny"
    # Every combination, the base run's held-out ones included: the mask steers the layout.
    config.data = common.shapes_data(
        image_size=config.data.image_size, holdout="", conditioning="mask"
    )
    config.controlnet = ml_collections.ConfigDict(
        {
            # Stages of the mask's embedding, down to the latents' size: pixels for the tiny
            # model (one stage), the demo VAE's 4x (three).
            "conditioning_embedding_out_channels": (8,) if tiny else (16, 32, 64),
            "channel_order": "rgb",
            "pretrained": "",  # a diffusers ControlNetModel folder to start from
        }
    )
    config.train = common.training(
        steps=4 if tiny else 900,
        batch_size=8 if tiny else 32,
        learning_rate=1e-3 if tiny else 3e-3,
    )
    config.train.update(
        {
            "warmup_steps": 1 if tiny else 20,
            "lr_schedule": "constant",
            "ema_rate": 0.0,  # the ControlNet as trained
            # Half the captions dropped, as Zhang et al. 2023: without its prompt the model
            # must read the shape from the mask.
            "caption_dropout": 0.5,
        }
    )
    return config
