"""jaxdiff's own text-to-image models (`TextToImageModel`: a text encoder, a UNet or an MMDiT, and
an optional autoencoder) on the shared pipeline loop: text-to-image, img2img and inpainting with the
arguments of every pipeline.

The sigmas come from the model's `Diffusion` (`sigma_schedule`, a name in
`jaxdiff.diffusion.SCHEDULES`, Karras by default, with `sigma_schedule_options`); prompts go
through the run's own word tokenizer, so an unknown word is a one-line error; a class-conditional
model's prompts are its class names or ids (`jaxdiff.models.class_names`), the unconditional
branch of guidance its null class. A ControlNet
(`controlnet=`) adds the control arguments of `jaxdiff.pipelines.controlnet`; LoRA adapters load
as on every pipeline (`jaxdiff.pipelines.lora`: a LoRA run's file, diffusers' or kohya's names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import samplers
from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError
from jaxdiff.models.controlnet import ControlNet
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.models.tokenizer import prompt_ids
from jaxdiff.pipelines.base import Grid, Pipeline, Sampling
from jaxdiff.pipelines.controlnet import ControlNetMixin, steered
from jaxdiff.pipelines.lora import LoRAMixin

Networks = tuple[TextToImageModel, tuple[ControlNet, ...]]  # the model and its ControlNets


class TextToImagePipeline(LoRAMixin, ControlNetMixin, Pipeline):
    """Samples images for prompts from a :class:`TextToImageModel` (defaults: Heun, 20 steps,
    guidance 3, Karras sigmas), steered by ControlNets if given."""

    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            "num_inference_steps": 20,
            "guidance_scale": 3.0,
            "sampler": "heun",
            "sigma_schedule": "karras",
        }
    )

    def __init__(
        self,
        model: TextToImageModel,
        tokenizer: Any,
        diffusion: Diffusion,
        image_size: int,
        devices: Sequence[jax.Device] | None = None,
        controlnet: ControlNet | Sequence[ControlNet] | None = None,
    ):
        """``image_size``: the default height and width (the size the model was trained at)."""
        self.tokenizer = tokenizer
        autoencoder = model.autoencoder
        self.vae_scale_factor = 1 if autoencoder is None else autoencoder.downsample_factor
        if model.transformer is not None and controlnet is not None:
            raise UserError("controlnet: a ControlNet steers a UNet; this model's is a transformer")
        controlnets = self._take_controlnets(controlnet, model.unet, self.vae_scale_factor)
        architecture = dict(model.denoiser.architecture)
        self.network_in_channels = architecture["in_channels"]
        self.latent_channels = architecture["out_channels"] or self.network_in_channels
        self.default_size = image_size
        super().__init__((model, controlnets), diffusion, devices)

    def guided(self, guidance_scale: float) -> bool:
        """Guidance at every scale but 1: 0 samples the unconditional model (the empty prompt),
        scales between 0 and 1 interpolate towards it."""
        return guidance_scale != 1.0

    def lora_components(self, networks: Networks) -> dict[str, nnx.Module]:
        model = networks[0]
        name = "unet" if model.transformer is None else "transformer"
        if model.class_conditional:
            return {name: model.denoiser}
        return {name: model.denoiser, "text_encoder": model.text_encoder}

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        return prompt_ids(self.tokenizer, prompts)

    def grid(self, sampling: Sampling) -> Grid:
        sigmas = self.diffusion.sampling_sigmas(
            sampling.num_inference_steps,
            sampling.sigma_schedule or self.defaults["sigma_schedule"],
            **(sampling.sigma_schedule_options or {}),
        )
        samplers.check_sigmas(sigmas, infinite_start=True)
        # A flow grid from t = 1 (sigma = inf) starts from the unit noise, the state there.
        start_std = 1.0 if np.isinf(sigmas[0]) else float(sigmas[0])
        return Grid(sigmas=np.asarray(sigmas), start_std=start_std)

    @staticmethod
    def encode_prompts(networks: Networks, ids: jax.Array, clip_skip: int = 0) -> jax.Array:
        del clip_skip  # max_clip_skip is 0: the encoder is trained with the model
        return networks[0].encode_text(ids)

    @staticmethod
    def predict(networks: Networks, x_in: jax.Array, t: jax.Array, context: Any) -> jax.Array:
        model, controlnets = networks
        if model.transformer is not None:
            return model.network(x_in, t, context)
        return steered(model.unet, controlnets, x_in, t, context)

    @staticmethod
    def encode_images(networks: Networks, images: jax.Array, keys: jax.Array) -> jax.Array:
        return networks[0].encode_images(images, keys).astype(jnp.float32)

    @staticmethod
    def decode_latents(networks: Networks, latents: jax.Array) -> jax.Array:
        return networks[0].decode_latents(latents)
