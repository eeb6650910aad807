"""Tiny random Stable Diffusion models saved by diffusers, for the pipeline tests.

The VAE's posterior is made nearly deterministic (log-variance clamped at -30, std 3e-7), so
that diffusers' and jaxdiff's image encodings agree although each samples the posterior with its
own random numbers. The scheduler config is Stable Diffusion 1.5's own.
"""

import json
import shutil

import pytest
from reference_models import (
    UNET_CONFIGS,
    VAE_CONFIGS,
    build_clip,
    build_unet,
    build_vae,
    write_tokenizer,
)

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
PREDICTIONS = ("epsilon", "v_prediction")


def scheduler_config(prediction: str) -> dict:
    return {**SD15_SCHEDULER, "prediction_type": prediction}


def _near_deterministic_vae():
    import torch

    vae = build_vae(VAE_CONFIGS["sd"])
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent:] = 0.0
        vae.quant_conv.bias[latent:] = -40.0
    return vae


def _save_model(tmp_path_factory, name: str, unet_config: dict) -> dict:
    """{prediction type: folder} of one tiny model, the folders differing in the scheduler's
    prediction type only."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path_factory.mktemp(f"{name}_tokenizer") / "tokenizer"
    write_tokenizer(tokenizer_dir)
    pipe = StableDiffusionPipeline(
        unet=build_unet(unet_config),
        vae=_near_deterministic_vae(),
        text_encoder=build_clip("quick_gelu"),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folders = {}
    for prediction in PREDICTIONS:
        folder = tmp_path_factory.mktemp(f"{name}_{prediction}")
        if not folders:
            pipe.save_pretrained(folder)
            first = folder
        else:
            shutil.copytree(first, folder, dirs_exist_ok=True)
        config = folder / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps(scheduler_config(prediction)))
        folders[prediction] = folder
    return folders


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory):
    """A tiny SD 1.x model (4-channel UNet, 16x16 images, 8x8x4 latents) per prediction type."""
    return _save_model(tmp_path_factory, "sd", UNET_CONFIGS["sd1"])


@pytest.fixture(scope="session")
def inpainting_folders(tmp_path_factory):
    """A tiny 9-channel inpainting model per prediction type."""
    return _save_model(tmp_path_factory, "inpaint", {**UNET_CONFIGS["inpaint"], "sample_size": 8})
