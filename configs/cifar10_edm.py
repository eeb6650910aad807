"""Pixel-space EDM (Karras et al. 2022) on CIFAR-10 from tfds, conditioned on class-name captions.

The training set is read through `tfds.data_source`, so prepare it once in ArrayRecord format
(preparing needs TensorFlow, which the `data` extra installs; training does not); captions are
"a photo of a {class}", dropped 10% of the time for classifier-free guidance. EDM's CIFAR-10
recipe: sigma_data 0.5, log-normal sigmas (P_mean -1.2, P_std 1.2), preconditioning and loss
weighting, horizontal flips, Adam at 1e-3, EMA half-life 0.5 M images with a 5% ramp-up, Heun
sampling with 18 steps (35 network evaluations).

    pip install 'jaxdiff[data]'
    jaxdiff prepare-data cifar10   # into ~/tensorflow_datasets; elsewhere: --data-dir DIR
    jaxdiff train --config configs/cifar10_edm.py --workdir runs/cifar10_edm
    jaxdiff sample --workdir runs/cifar10_edm --prompt "a photo of a horse"
    jaxdiff train --config configs/cifar10_edm.py:tiny --workdir /tmp/cifar10_tiny   # 16 px, CPU

On a pod, split the weights too, e.g. ``--config.mesh.fsdp=4`` (data fills the rest).
"""

from __future__ import annotations

import ml_collections

from . import common

PREVIEW_PROMPTS = (
    "a photo of a horse",
    "a photo of a ship",
    "a photo of a frog",
    "a photo of a truck",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    config = common.base("text_to_image")
    config.data = common.tfds_data(
        "cifar10",
        image_size=16 if tiny else 32,
        label_key="label",
        caption_template="a photo of a {}",
        resize=tiny,
        flip=True,
    )
    config.vae_workdir = ""  # pixel space
    config.pretrained_vae = ""  # or a diffusers AutoencoderKL folder / hub id
    config.model.text = ml_collections.ConfigDict(
        {
            "hidden_size": 32 if tiny else 256,
            "intermediate_size": 64 if tiny else 1024,
            "num_hidden_layers": 1 if tiny else 2,
            "num_attention_heads": 2 if tiny else 4,
            "max_position_embeddings": 8,
            "hidden_act": "quick_gelu",
        }
    )
    config.model.unet = ml_collections.ConfigDict(
        {
            "block_out_channels": (16, 32) if tiny else (128, 256, 256, 256),
            "down_block_types": ("CrossAttnDownBlock2D",) * 2
            if tiny
            else ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D",) * 2
            if tiny
            else ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "layers_per_block": 1 if tiny else 2,
            "attention_head_dim": 2 if tiny else 8,
            "norm_num_groups": 8 if tiny else 32,
        }
    )
    config.diffusion = ml_collections.ConfigDict(
        {
            "process": "edm",
            "process_options": {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2},
            "parameterization": "edm",
            "weighting": "edm",
            "min_snr_gamma": 5.0,
        }
    )
    config.train = common.training(
        steps=60 if tiny else 400_000,  # 200 M images at batch 512
        batch_size=8 if tiny else 512,
        learning_rate=1e-3,
    )
    config.train.update(
        {
            "warmup_steps": 5 if tiny else 20_000,  # EDM: 10 M images
            "lr_schedule": "constant",
            "adam_b2": 0.999,
            "ema_half_life_images": 500_000.0,
            "ema_rampup": 0.05,
            "caption_dropout": 0.1,
        }
    )
    if not tiny:
        config.train.update({"log_every": 500, "checkpoint_every": 10_000, "preview_every": 20_000})
    config.sample = ml_collections.ConfigDict(
        {
            "sampler": "heun",
            "steps": 4 if tiny else 18,
            "guidance": 1.5,
            "preview_prompts": PREVIEW_PROMPTS[:2] if tiny else PREVIEW_PROMPTS,
        }
    )
    return config
