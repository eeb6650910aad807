"""KL autoencoder on the embedded ``shapes`` data: 32×32×3 images to 8×8×4 latents.

jaxdiff train --config configs/shapes_vae.py --workdir runs/shapes_vae
jaxdiff train --config configs/shapes_vae.py:tiny --workdir /tmp/vae_tiny   # < 1 minute
"""

from __future__ import annotations

import ml_collections

from . import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    config = common.base("vae")
    config.data = common.shapes_data(image_size=16 if tiny else 32)
    config.model.vae = ml_collections.ConfigDict(
        {
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (16, 32) if tiny else (32, 64, 64),
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8 if tiny else 16,
            "mid_block_add_attention": not tiny,
        }
    )
    # A small KL weight (on per-element means) keeps the latents nearly deterministic; the
    # text-to-image stage normalises them by their measured standard deviation.
    config.loss = ml_collections.ConfigDict({"reconstruction": "l2", "kl_weight": 1e-6})
    config.train = common.training(
        steps=40 if tiny else 600,
        batch_size=8 if tiny else 32,
        learning_rate=1e-3 if tiny else 2e-3,
    )
    return config
