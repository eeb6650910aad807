"""Prompt-to-image pipelines: `StableDiffusion` and `StableDiffusionXL` (converted diffusers
weights: text-to-image, img2img, inpainting), `StableDiffusionUpscale` (the x4 upscaler), `DiT`
(class-conditional, converted diffusers weights) and `TextToImagePipeline` (jaxdiff's own trained
models)."""

from jaxdiff.pipelines.dit import DiT
from jaxdiff.pipelines.stable_diffusion import StableDiffusion
from jaxdiff.pipelines.stable_diffusion_upscale import StableDiffusionUpscale
from jaxdiff.pipelines.stable_diffusion_xl import StableDiffusionXL
from jaxdiff.pipelines.text_to_image import TextToImagePipeline

__all__ = [
    "DiT",
    "StableDiffusion",
    "StableDiffusionUpscale",
    "StableDiffusionXL",
    "TextToImagePipeline",
]
