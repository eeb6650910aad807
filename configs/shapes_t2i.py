"""Text-to-image latent diffusion on the embedded ``shapes`` data.

Needs a trained autoencoder (configs/shapes_vae.py); the ``tiny`` variant runs on pixels with no
autoencoder, on its own, in under a minute.

    jaxdiff train --config configs/shapes_vae.py --workdir runs/shapes_vae
    jaxdiff train --config configs/shapes_t2i.py --workdir runs/shapes_t2i \\
        --config.vae_workdir=runs/shapes_vae
    jaxdiff sample --workdir runs/shapes_t2i --prompt "a red circle in the top left corner"
    jaxdiff train --config configs/shapes_t2i.py:tiny --workdir /tmp/t2i_tiny   # < 1 minute
"""

from __future__ import annotations

import ml_collections

from . import common

PREVIEW_PROMPTS = (
    "a red circle in the top left corner",
    "a green square in the center",
    "a blue triangle in the bottom right corner",
    "a yellow square in the top right corner",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    config = common.base("text_to_image")
    config.data = common.shapes_data(image_size=16 if tiny else 32)
    config.vae_workdir = ""  # "" trains on pixels
    config.pretrained_vae = ""  # or a diffusers AutoencoderKL folder / hub id
    config.model.text = ml_collections.ConfigDict(
        {
            "hidden_size": 32 if tiny else 128,
            "intermediate_size": 64 if tiny else 512,
            "num_hidden_layers": 1 if tiny else 2,
            "num_attention_heads": 2 if tiny else 4,
            "max_position_embeddings": 16,
            "hidden_act": "quick_gelu",
        }
    )
    config.model.unet = ml_collections.ConfigDict(
        {
            "block_out_channels": (16, 32) if tiny else (64, 128),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "layers_per_block": 1,
            "attention_head_dim": 2 if tiny else 4,
            "norm_num_groups": 8 if tiny else 32,
        }
    )
    config.diffusion = ml_collections.ConfigDict(
        {
            "process": "edm",
            # Latents are normalised to unit std (sigma_data 1), so the EDM training noise
            # distribution is shifted up from the paper's pixel-space P_mean -1.2: layout and
            # position are decided at high noise levels.
            "process_options": {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2}
            if tiny
            else {"sigma_data": 1.0, "p_mean": -0.4, "p_std": 1.4},
            "parameterization": "edm",
            "weighting": "edm",
            "min_snr_gamma": 5.0,
        }
    )
    config.train = common.training(
        steps=60 if tiny else 1200,
        batch_size=8 if tiny else 64,
        learning_rate=1e-3 if tiny else 6e-4,
    )
    config.train.caption_dropout = 0.1
    config.sample = ml_collections.ConfigDict(
        {
            "sampler": "heun",
            "steps": 4 if tiny else 20,
            "guidance": 3.0,
            "preview_prompts": PREVIEW_PROMPTS[:2] if tiny else PREVIEW_PROMPTS,
        }
    )
    return config


def adapting(arg: str | None, task: str) -> ml_collections.ConfigDict:
    """This config for ``task``, which adapts a trained run of it (``base_workdir``, e.g.
    runs/demo/t2i): the same architecture and noise process, checked against the run's."""
    config = get_config(arg)
    config.task = task
    config.base_workdir = ""  # the trained text-to-image run
    return config
