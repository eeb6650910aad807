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


def tiny_stable_diffusion(folder: Path) -> Path:
    """A tiny SD 1.x model folder."""
    return save_stable_diffusion(folder, build_unet(PIPELINE_UNET), build_vae(PIPELINE_VAE))


def finetune_config(tmp_path: Path, *overrides: str):
    """The tiny fine-tuning config on a tiny model and a folder of six captioned images."""
    model_dir = tiny_stable_diffusion(tmp_path / "tiny_sd")
    (tmp_path / "images").mkdir()
    images = image_folder(tmp_path / "images")
    settings = [f"pretrained={model_dir}", f"data.path={images}", *overrides]
    return load_config(f"{CONFIGS / 'sd15_finetune.py'}:tiny", settings)
