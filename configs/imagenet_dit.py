"""Class-conditional DiT-XL/2 (Peebles & Xie 2023) on ImageNet-256 latents, the paper's recipe.

The model is the DiT of ``model.dit`` on the latents of Stable Diffusion's VAE
(``stabilityai/sd-vae-ft-ema``, frozen, scaling factor 0.18215), conditioned on the class label;
10% of the labels are dropped to the null class for classifier-free guidance. The process is
DDPM's (1000 steps, betas linear from 1e-4 to 0.02) with a noise-predicting network; the paper's
model also learns the variance (a second output half trained by the variational bound), which
this training does not: its network predicts the noise only. AdamW at 1e-4 without weight decay
or warmup, batch 256, EMA 0.9999, 400K steps (the paper's FID table; its best model ran 7M);
gradients are clipped at norm 1, which the paper does not do.

The data is tfds ``imagenet2012`` read through ``tfds.data_source``; prepare it once in ArrayRecord
format from the manually downloaded archives (tfds's own command, below). Its class names are
WordNet ids, so
a prompt is a synset (``n02099601``) or a class id (``207``). Each image is resized and center
cropped to 256 and encoded once: the VAE's posterior moments are cached in the workdir
(``train.cache_encodings``; cached images are not flipped, the paper flips them).

FID-50K: ``jaxdiff eval`` samples one image per label of the first 50,000 training examples with
250 steps of the ``ddpm`` sampler at guidance 1.5, the paper's settings for its FID (2.27, reached
by its 7M-step model), on the pipeline's Karras grid over the process's range; the paper respaces
DDPM's 1000 timesteps, guides 3 of the 4 latent channels and learns the variance, so this FID is
the recipe's own, not a reproduction. Give pytorch-fid's Inception weights, and ADM's reference
statistics of the whole training set if wanted.

One process only with the cache (``train.cache_encodings``: about 42 GB of float32 moments in the
workdir for ImageNet's 1.28M images); on several hosts (a v5e-16) turn it off.

    tfds build imagenet2012 --manual_dir DIR --file_format array_record   # the 2012 archives
    jaxdiff train --config configs/imagenet_dit.py --workdir runs/imagenet_dit \\
        --config.mesh.fsdp=8        # e.g. 8 GPUs on one host
    jaxdiff eval --workdir runs/imagenet_dit --config.eval.metrics=fid \\
        --config.eval.inception_weights=pt_inception-2015-12-05-6726825d.pth
    jaxdiff sample --workdir runs/imagenet_dit --prompt 207 --prompt 360 --guidance 4
    jaxdiff train --config configs/imagenet_dit.py:tiny --workdir /tmp/dit_tiny   # CPU

``:tiny`` is a two-block DiT on 16 px images in pixel space (no VAE to fetch); it still reads
the prepared ``imagenet2012`` (the tests mock it).
"""

from __future__ import annotations

import ml_collections

from jaxdiff.models.dit import DIT_PRESETS

from . import common

SD_VAE = "stabilityai/sd-vae-ft-ema"
# DiT's sample classes: golden retriever, otter, red panda, geyser, macaw, valley, balloon,
# arctic fox.
PREVIEW_PROMPTS = ("207", "360", "387", "974", "88", "979", "417", "279")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg)
    tiny = arg == "tiny"
    config = common.base("text_to_image")
    config.data = common.tfds_data(
        "imagenet2012", 16 if tiny else 256, label_key="label", resize=True
    )
    config.vae_workdir = ""
    config.pretrained_vae = "" if tiny else SD_VAE
    config.model.denoiser = "dit"
    preset = dict(DIT_PRESETS["DiT-XL/2"])
    if tiny:
        preset.update(num_layers=2, num_attention_heads=2, attention_head_dim=16)
    config.model.dit = ml_collections.ConfigDict(preset)
    config.diffusion = ml_collections.ConfigDict(
        {
            "process": "vp_discrete",
            "process_options": {
                "beta_schedule": "linear",
                "beta_start": 1e-4,
                "beta_end": 0.02,
                "num_train_timesteps": 1000,
            },
            "parameterization": "eps",
            "weighting": "uniform",
            "min_snr_gamma": 5.0,
        }
    )
    config.train = common.training(
        steps=2 if tiny else 400_000, batch_size=8 if tiny else 256, learning_rate=1e-4
    )
    config.train.update(
        {
            "warmup_steps": 0,
            "lr_schedule": "constant",
            "adam_b2": 0.999,
            "ema_rate": 0.9999,
            "ema_warmup": False,
            "caption_dropout": 0.1,  # the class label -> the null class
            "cache_encodings": not tiny,
        }
    )
    if not tiny:
        config.train.update({"log_every": 100, "checkpoint_every": 10_000, "preview_every": 50_000})
    config.sample = ml_collections.ConfigDict(
        {
            "sampler": "ddpm",
            "steps": 4 if tiny else 250,
            "guidance": 1.5,
            "preview_prompts": PREVIEW_PROMPTS[:2] if tiny else PREVIEW_PROMPTS,
        }
    )
    # FID-50K with `jaxdiff eval --config.eval.metrics=fid` (it needs the Inception weights).
    config.eval.update(
        {
            "num_samples": 8 if tiny else 50_000,
            "batch_size": 8 if tiny else 250,
        }
    )
    return config
