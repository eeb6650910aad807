"""Prompt-to-image pipelines: `StableDiffusion` (converted diffusers weights: text-to-image,
img2img, inpainting) and `TextToImagePipeline` (jaxdiff's own trained models)."""

from jaxdiff.pipelines.stable_diffusion import StableDiffusion
from jaxdiff.pipelines.text_to_image import TextToImagePipeline

__all__ = ["StableDiffusion", "TextToImagePipeline"]
