"""The shapes text-to-image model with a transformer denoiser trained by flow matching: SD3's
MMDiT (joint attention over image patches and the text encoder's tokens, adaLN-Zero from the
time and the pooled text) in place of the UNet, and the rectified-flow process and velocity
network of ``shapes_flow.py``. The same data, text encoder and autoencoder as ``shapes_t2i.py``.

    jaxdiff train --config configs/shapes_dit.py --workdir runs/shapes_dit \\
        --config.vae_workdir=runs/shapes_vae
    jaxdiff train --config configs/shapes_dit.py:tiny --workdir /tmp/dit_tiny   # pixels
"""

from __future__ import annotations

import ml_collections

from . import shapes_flow


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = shapes_flow.get_config(arg)
    tiny = arg == "tiny"
    # The denoiser: the MMDiT below in place of the UNet of ``model.unet`` (a text-to-image config
    # without these two fields trains its UNet).
    config.model.denoiser = "mmdit"
    config.model.mmdit = ml_collections.ConfigDict(
        {
            "patch_size": 2,
            "num_layers": 2 if tiny else 4,
            "num_attention_heads": 2 if tiny else 4,
            "attention_head_dim": 16 if tiny else 32,
        }
    )
    return config
