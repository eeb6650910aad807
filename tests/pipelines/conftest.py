"""Tiny random Stable Diffusion models saved by diffusers, for the pipeline tests.

The VAE's posterior is made nearly deterministic (log-variance clamped at -30, std 3e-7), so
that diffusers' and jaxdiff's image encodings agree although each samples the posterior with its
own random numbers. The scheduler config is Stable Diffusion 1.5's own.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from reference_models import (
    PIPELINE_UNET,
    SD15_SCHEDULER,
    UNET_CONFIGS,
    build_controlnet,
    build_unet,
    encoder_options,
    near_deterministic_vae,
    save_stable_diffusion,
)

from jaxdiff.pipelines.sample_png import display_scale

PREDICTIONS = ("epsilon", "v_prediction")
GRID_PAD = 2  # jaxdiff.images.grid's border


def grid_cells(path, rows: int, columns: int, size: int = 16) -> np.ndarray:
    """The images of a grid PNG that `jaxdiff sample` wrote, its display enlargement undone (and
    checked). [rows * columns, size, size, 3] uint8"""
    scale = display_scale(size)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    step = size + GRID_PAD
    assert pixels.shape[:2] == (
        scale * (rows * step + GRID_PAD),
        scale * (columns * step + GRID_PAD),
    )
    pixels = pixels[::scale, ::scale]
    return np.stack(
        [
            pixels[
                GRID_PAD + r * step : GRID_PAD + r * step + size,
                GRID_PAD + c * step : GRID_PAD + c * step + size,
            ]
            for r in range(rows)
            for c in range(columns)
        ]
    )


def scheduler_config(prediction: str) -> dict:
    return {**SD15_SCHEDULER, "prediction_type": prediction}


def _save_model(tmp_path_factory, name: str, unet_config: dict) -> dict:
    """{prediction type: folder} of one tiny model, the folders differing in the scheduler's
    prediction type only."""
    first = tmp_path_factory.mktemp(f"{name}_{PREDICTIONS[0]}")
    save_stable_diffusion(first, build_unet(unet_config), near_deterministic_vae())
    folders = {}
    for prediction in PREDICTIONS:
        folder = first
        if prediction != PREDICTIONS[0]:
            folder = tmp_path_factory.mktemp(f"{name}_{prediction}")
            shutil.copytree(first, folder, dirs_exist_ok=True)
        config = folder / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps(scheduler_config(prediction)))
        folders[prediction] = folder
    return folders


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory):
    """A tiny SD 1.x model (4-channel UNet, 16x16 images, 8x8x4 latents) per prediction type."""
    return _save_model(tmp_path_factory, "sd", PIPELINE_UNET)


@pytest.fixture(scope="session")
def inpainting_folders(tmp_path_factory):
    """A tiny 9-channel inpainting model per prediction type."""
    return _save_model(tmp_path_factory, "inpaint", {**UNET_CONFIGS["inpaint"], "sample_size": 8})


def _save_controlnet(tmp_path_factory, name: str, unet_config: dict, seed: int, **options):
    """A ControlNet for the UNet of `unet_config` reading control images at the tiny VAE's
    size (2x the latents'), saved by diffusers."""
    config = {
        **encoder_options(unet_config),
        "conditioning_embedding_out_channels": (8, 16),
        **options,
    }
    folder = tmp_path_factory.mktemp(name)
    build_controlnet(config, seed).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def controlnet_folders(tmp_path_factory):
    """Two ControlNets for `sd_folders`' model: one reading RGB control images, one BGR."""
    return (
        _save_controlnet(tmp_path_factory, "controlnet_rgb", PIPELINE_UNET, 3),
        _save_controlnet(
            tmp_path_factory,
            "controlnet_bgr",
            PIPELINE_UNET,
            4,
            controlnet_conditioning_channel_order="bgr",
        ),
    )


@pytest.fixture(scope="session")
def inpainting_controlnet_folder(tmp_path_factory):
    """A ControlNet for `inpainting_folders`' 9-channel UNet (it reads the 4 latent channels)."""
    config = {**UNET_CONFIGS["inpaint"], "in_channels": 4}
    return _save_controlnet(tmp_path_factory, "controlnet_inpaint", config, 5)
