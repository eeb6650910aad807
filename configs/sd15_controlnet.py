"""A ControlNet for Stable Diffusion 1.5 on an image-caption folder with conditioning images.

`sd15_finetune.py`'s model, objective and mesh with the UNet, the VAE and the text encoder
frozen, training a ControlNet copied from the UNet's encoder at the learning rate of diffusers'
`train_controlnet.py` example (1e-5, constant, no EMA), half the captions dropped as in the
ControlNet paper. The folder lists each image's
conditioning image in diffusers' layout (column `conditioning_file_name`). At the last step the
ControlNet is written to `WORKDIR/controlnet` in diffusers' format.

    # {"file_name": "0001.jpg", "conditioning_file_name": "edges/0001.png", "text": "..."}
    jaxdiff train --config configs/sd15_controlnet.py --workdir runs/sd15_canny \\
        --config.data.path=/data/fill50k
    jaxdiff sample --pretrained stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --controlnet runs/sd15_canny/controlnet --control-image edges.png --prompt "a house"
    jaxdiff sample --workdir runs/sd15_canny --control-image edges.png --prompt "a house"
"""

from __future__ import annotations

import ml_collections

from . import common, sd15_finetune

VARIANTS = (None, "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    config = sd15_finetune.get_config(arg)
    config.task = "controlnet"
    config.data = common.folder_data(
        "",
        image_size=16 if tiny else 512,
        conditioning_column="conditioning_file_name",
    )
    config.controlnet = ml_collections.ConfigDict(
        {
            # Stages of the conditioning image's embedding: each after the first halves its
            # size, down to the latents' (SD's VAE: 8x; the tiny test VAE: 2x).
            "conditioning_embedding_out_channels": (8, 16) if tiny else (16, 32, 96, 256),
            "channel_order": "rgb",  # or "bgr": the control images' channels reversed
            "pretrained": "",  # a diffusers ControlNetModel folder to start from
        }
    )
    config.train.update(
        {
            "learning_rate": 1e-5,
            "steps": 4 if tiny else 20_000,
            "warmup_steps": 1 if tiny else 0,
            "weight_decay": 1e-2,
            "ema_rate": 0.0,  # the ControlNet as trained
            "caption_dropout": 0.0 if tiny else 0.5,  # Zhang et al. 2023 drop half the prompts
        }
    )
    if not tiny:
        config.train.update({"checkpoint_every": 1000, "preview_every": 1000})
    return config
