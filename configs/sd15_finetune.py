"""Fine-tuning Stable Diffusion 1.5's UNet on an image-caption folder or a tfds data set.

The weights come from a diffusers-format folder or the hub (converted on load); the VAE and the
text encoder stay frozen; the objective is the model's own (epsilon prediction on its discrete
schedule), Min-SNR-5 weighted. The mesh is pure FSDP over every device (a v5e-16 pod slice or
8 GPUs): weights, Adam moments and EMA are split 16 (or 8) ways, 0.9 (1.7) GB per device, and
the batch of 64 is split over the same devices. bf16 compute with fp32 weights, each UNet block
rematerialized.

    # images beside captions.jsonl / metadata.csv ({"file_name": ..., "text": ...} per image)
    jaxdiff train --config configs/sd15_finetune.py --workdir runs/sd15_ft \\
        --config.data.path=/data/my_photos
    # or a tfds data set with class-name captions, prepared once as ArrayRecord
    pip install 'jaxdiff[data]'
    jaxdiff prepare-data oxford_flowers102
    jaxdiff train --config configs/sd15_finetune.py:tfds --workdir runs/sd15_flowers
    jaxdiff sample --workdir runs/sd15_ft --prompt "a photo of a red bicycle"
    # CPU smoke run on a tiny model folder and a folder of images
    jaxdiff train --config configs/sd15_finetune.py:tiny --workdir /tmp/ft_tiny \\
        --config.pretrained=/path/to/tiny_sd --config.data.path=/path/to/images
"""

from __future__ import annotations

import ml_collections

from jaxdiff.errors import UserError

from . import common

VARIANTS = (None, "tfds", "tiny")
PREVIEW_PROMPTS = (
    "a photo of a red bicycle leaning against a brick wall",
    "a watercolor painting of a lighthouse at dusk",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise UserError(f"unknown config variant {arg!r}; accepted: tfds, tiny (or none)")
    tiny = arg == "tiny"
    config = common.base("finetune")
    config.pretrained = "" if tiny else "stable-diffusion-v1-5/stable-diffusion-v1-5"
    config.variant = ""  # "fp16" reads the *.fp16.safetensors weights
    if arg == "tfds":
        config.data = common.tfds_data(
            "oxford_flowers102",
            image_size=512,
            label_key="label",
            caption_template="a photo of a {}, a type of flower",
            resize=True,
            flip=True,
        )
    else:
        config.data = common.folder_data("", image_size=16 if tiny else 512, flip=not tiny)
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    config.model.dtype = "float32" if tiny else "bfloat16"
    config.diffusion = ml_collections.ConfigDict({"weighting": "min_snr", "min_snr_gamma": 5.0})
    config.train = common.training(
        steps=4 if tiny else 15_000,
        batch_size=8 if tiny else 64,
        learning_rate=1e-5,
    )
    config.train.update(
        {
            "warmup_steps": 1 if tiny else 500,
            "lr_schedule": "constant",
            "weight_decay": 1e-2,
            "adam_b2": 0.999,
            "ema_rate": 0.9999,
            "remat": not tiny,
            "caption_dropout": 0.1,
            # Encode each image and caption once with the frozen VAE / text encoder (needs
            # data.flip=False; WORKDIR/encodings/ holds them, remade when the weights change).
            "cache_encodings": False,
        }
    )
    if not tiny:
        config.train.update({"log_every": 50, "checkpoint_every": 1000, "preview_every": 1000})
    config.sample = ml_collections.ConfigDict(
        {
            "sampler": "dpmpp_2m",
            "steps": 3 if tiny else 25,
            "guidance": 7.5,
            "preview_prompts": ("a red bicycle", "a lighthouse") if tiny else PREVIEW_PROMPTS,
        }
    )
    return config
