"""The runs the LoRA parity tests compare: two prompts (one with a negative prompt), 3 DDIM steps
from the same noise, on a diffusers pipeline and on a jaxdiff one, as (latents [B, h, w, c],
images [B, H, W, 3] in [0, 1] decoded from them)."""

import numpy as np
import torch

PROMPTS = ["a red cat", "blue sky"]
NEGATIVES = ["dog", ""]
SETTINGS = dict(negative_prompt=NEGATIVES, num_inference_steps=3, guidance_scale=5.0)
TOLERANCE = 1e-3  # images: max abs error, [0, 1] scale
LATENT_TOLERANCE = 3e-4  # latents: max abs error over the reference's max |latent|


def noise() -> torch.Tensor:
    return torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(0))


def diffusers_run(pipe, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """A diffusers pipeline's latents, and its images decoded from them as the pipeline does."""
    latents = pipe(PROMPTS, latents=noise(), output_type="latent", **SETTINGS, **kwargs).images
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    return latents.permute(0, 2, 3, 1).numpy(), images


def jaxdiff_run(pipe, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    latents = pipe(
        PROMPTS,
        sampler="ddim",
        latents=noise().permute(0, 2, 3, 1),
        output_type="latent",
        **SETTINGS,
        **kwargs,
    )
    return latents, pipe.decode(latents)


def errors(got, want) -> tuple[float, float]:
    """(max abs image error, max abs latent error over the reference's max |latent|)."""
    (latents, images), (want_latents, want_images) = got, want
    latent_error = np.abs(latents - want_latents).max() / np.abs(want_latents).max()
    return float(np.abs(images - want_images).max()), float(latent_error)
