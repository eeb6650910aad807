"""A LoRA for Stable Diffusion 1.5 on an image-caption folder or a tfds data set.

`sd15_finetune.py`'s model, data, objective and mesh (the frozen base split over every device),
training rank-16 adapters (alpha 16) on the UNet's attention projections at diffusers' LoRA
learning rate, without EMA. At the last step the adapters are written to
`WORKDIR/pytorch_lora_weights.safetensors`, which diffusers' `load_lora_weights`, ComfyUI and
A1111 load (`--config.lora.save_format=kohya` for kohya's key names).

    jaxdiff train --config configs/sd15_lora.py --workdir runs/sd15_lora \\
        --config.data.path=/data/my_photos
    # also the feed-forward layers and the text encoder's attention
    jaxdiff train --config configs/sd15_lora.py --workdir runs/sd15_lora \\
        --config.data.path=/data/my_photos \\
        --config.lora.unet_targets=to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2 \\
        --config.lora.text_encoder_targets=q_proj,k_proj,v_proj,out_proj
    jaxdiff sample --pretrained stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --lora runs/sd15_lora/pytorch_lora_weights.safetensors --prompt "a photo of sks dog"
"""

from __future__ import annotations

import ml_collections

from . import sd15_finetune

VARIANTS = sd15_finetune.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = sd15_finetune.get_config(arg)
    tiny = arg == "tiny"
    config.task = "lora"
    config.lora = ml_collections.ConfigDict(
        {
            "rank": 4 if tiny else 16,
            "alpha": 8.0 if tiny else 16.0,
            "dropout": 0.0,  # peft's lora_dropout: the adapters' inputs dropped in training
            # peft's target_modules: a reference module path, or its end after a "."
            "unet_targets": ("to_q", "to_k", "to_v", "to_out.0"),
            "text_encoder_targets": (),
            "save_format": "peft",  # or "kohya"
        }
    )
    config.train.update(
        {
            "learning_rate": 1e-4,
            "steps": 4 if tiny else 3000,
            "warmup_steps": 1 if tiny else 100,
            "weight_decay": 1e-2,
            "ema_rate": 0.0,  # the adapters as trained
        }
    )
    if not tiny:
        config.train.update({"checkpoint_every": 500, "preview_every": 500})
    return config
