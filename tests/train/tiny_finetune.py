"""A tiny Stable Diffusion model folder and a folder of captioned images for fine-tuning tests."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from reference_models import (
    PIPELINE_UNET,
    PIPELINE_VAE,
    build_unet,
    build_vae,
    save_stable_diffusion,
)

from jaxdiff.configuration import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def image_folder(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        size = (20 + 4 * i, 18)  # mixed sizes, resized and cropped by the config
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
            root / f"{i}.png"
        )
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a photo number {i}"}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root


def controlnet_folder(root: Path, count: int = 4) -> Path:
    """16x16 images, each beside a conditioning image (a bright square where the image has a
    darker one) and a caption, listed in diffusers' ControlNet layout."""
    rng = np.random.default_rng(1)
    rows = []
    (root / "conditioning").mkdir(parents=True)
    for i in range(count):
        image = rng.integers(100, 255, (16, 16, 3), dtype=np.uint8)
        control = np.zeros((16, 16, 3), np.uint8)
        top, left = rng.integers(0, 8, 2)
        image[top : top + 8, left : left + 8] //= 3
        control[top : top + 8, left : left + 8] = 255
        Image.fromarray(image).save(root / f"{i}.png")
        Image.fromarray(control).save(root / "conditioning" / f"{i}.png")
        rows.append(
            json.dumps(
                {
                    "file_name": f"{i}.png",
                    "conditioning_file_name": f"conditioning/{i}.png",
                    "text": f"dark box {i}",
                }
            )
        )
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def tiny_stable_diffusion(folder: Path) -> Path:
    """A tiny SD 1.x model folder."""
    return save_stable_diffusion(folder, build_unet(PIPELINE_UNET), build_vae(PIPELINE_VAE))


def controlnet_config(tmp_path: Path, *overrides: str):
    """The tiny ControlNet config on a tiny model and a folder of four images with conditioning
    images."""
    model_dir = tiny_stable_diffusion(tmp_path / "tiny_sd")
    images = controlnet_folder(tmp_path / "controlled")
    settings = [f"pretrained={model_dir}", f"data.path={images}", *overrides]
    return load_config(f"{CONFIGS / 'sd15_controlnet.py'}:tiny", settings)


def finetune_config(tmp_path: Path, *overrides: str):
    """The tiny fine-tuning config on a tiny model and a folder of six captioned images."""
    model_dir = tiny_stable_diffusion(tmp_path / "tiny_sd")
    (tmp_path / "images").mkdir()
    images = image_folder(tmp_path / "images")
    settings = [f"pretrained={model_dir}", f"data.path={images}", *overrides]
    return load_config(f"{CONFIGS / 'sd15_finetune.py'}:tiny", settings)
