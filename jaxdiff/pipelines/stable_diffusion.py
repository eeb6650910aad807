"""Stable Diffusion text-to-image, img2img and inpainting on converted diffusers weights.

    pipe = StableDiffusion.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    images = pipe("an astronaut riding a horse", num_inference_steps=30, sampler="dpmpp_2m")
    edited = pipe.img2img("a watercolor painting", image, strength=0.6)
    filled = pipe.inpaint("a cat on a bench", image, mask)

    pipe = StableDiffusion.from_pretrained("stable-diffusion-v1-5", controlnet="sd15-canny")
    images = pipe("a house", control_image=edges)   # every mode; see jaxdiff.pipelines.controlnet

The model's scheduler config decides the process, the prediction type and the timesteps
(`SchedulerConfig`); `sampler` picks any sampler of the zoo, on the grid its diffusers
counterpart would use. The batch of images is split over every local device on a `data` mesh
axis (padded to a multiple of the device count); image i of a call starts from the key
`fold_in(key, first_index + i)` (`first_index` 0 by default), so it is the same whatever the
batch size, the number of calls a set is made in, or the number of devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError
from jaxdiff.models.controlnet import ControlNet
from jaxdiff.pipelines import vae_latents
from jaxdiff.pipelines.base import Grid, Pipeline, Sampling
from jaxdiff.pipelines.controlnet import ControlNetMixin, steered
from jaxdiff.pipelines.lora import LoRAMixin
from jaxdiff.pipelines.prompts import tokenize
from jaxdiff.pipelines.scheduler_config import SchedulerConfig


class StableDiffusion(LoRAMixin, ControlNetMixin, Pipeline):
    """Text-to-image (`__call__`), `img2img` and `inpaint` with a UNet, a VAE and a CLIP text
    encoder in diffusers' layout; sampling defaults as diffusers' (50 DDIM steps, guidance 7.5),
    the sigmas as the scheduler config's diffusers scheduler lays them out. LoRAs load into the
    UNet and the text encoder (`LoRAMixin`). With ControlNets (`controlnet=`), every call takes
    `control_image`, `controlnet_conditioning_scale`, `guess_mode`, `control_guidance_start` and
    `control_guidance_end` (`ControlNetMixin`)."""

    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"num_inference_steps": 50, "guidance_scale": 7.5, "sampler": "ddim"}
    )

    def __init__(
        self,
        unet: nnx.Module,
        vae: nnx.Module,
        text_encoder: nnx.Module,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        devices: Sequence[jax.Device] | None = None,
        controlnet: ControlNet | Sequence[ControlNet] | None = None,
    ):
        if unet.add_embedding is not None:
            raise UserError("an SDXL UNet (addition_embed_type='text_time'); use StableDiffusionXL")
        if unet.class_embedding is not None:
            raise UserError(
                "an upscaler UNet (num_class_embeds: the noise level as class labels); use "
                "StableDiffusionUpscale"
            )
        controlnets = self._take_controlnets(controlnet, unet, vae.downsample_factor)
        self.tokenizer = tokenizer
        self.max_clip_skip = len(text_encoder.encoder.layers) - 1
        diffusion = describe_unet_model(self, unet, vae, scheduler_config)
        super().__init__((unet, vae, text_encoder, controlnets), diffusion, devices)

    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_hub_id: str | Path,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike | None = None,
        variant: str | None = None,
        devices: Sequence[jax.Device] | None = None,
        controlnet: Any = None,
    ) -> StableDiffusion:
        """A diffusers-format Stable Diffusion folder or hub id (see
        `jaxdiff.convert.load_pipeline_components`); `dtype` is the networks' compute dtype,
        `param_dtype` that of their weights (default: `dtype`). `controlnet`: a `ControlNetModel`
        folder or hub id, or a `ControlNet`, or a list of them."""
        from jaxdiff.convert.pipeline_components import load_component, load_pipeline_components

        param_dtype = dtype if param_dtype is None else param_dtype
        parts = load_pipeline_components(
            model_dir_or_hub_id, dtype=dtype, param_dtype=param_dtype, variant=variant, sdxl=False
        )
        if controlnet is None:
            given = []
        else:
            given = list(controlnet) if isinstance(controlnet, list | tuple) else [controlnet]
        controlnets = [
            net
            if isinstance(net, ControlNet)
            else load_component(net, dtype=dtype, param_dtype=param_dtype, variant=variant)
            for net in given
        ]
        return cls(
            parts.unet,
            parts.vae,
            parts.text_encoder,
            parts.tokenizer,
            parts.scheduler_config,
            devices=devices,
            controlnet=controlnets,
        )

    def lora_components(self, networks: Any) -> dict[str, nnx.Module]:
        unet, _, text_encoder, _ = networks
        return {"unet": unet, "text_encoder": text_encoder}

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        """Padded and cut at the tokenizer's 77 tokens, as diffusers (a warning names the words
        a cut drops)."""
        return tokenize(self.tokenizer, prompts)

    def grid(self, sampling: Sampling) -> Grid:
        return self.scheduler.call_grid(sampling)

    @staticmethod
    def encode_prompts(networks: Any, ids: jax.Array, clip_skip: int = 0) -> jax.Array:
        """The text encoder's hidden state `[B, T, D]`, `clip_skip` layers before the last,
        through the final layer norm (diffusers' `clip_skip`)."""
        _, _, text_encoder, _ = networks
        return text_encoder(ids, skip_last_layers=clip_skip).last_hidden_state

    @staticmethod
    def predict(networks: Any, x_in: jax.Array, t: jax.Array, context: Any) -> jax.Array:
        """The UNet's output for the text context `[B, T, D]`, or for `(text, control)` with
        the ControlNets' residuals added."""
        unet, _, _, controlnets = networks
        return steered(unet, controlnets, x_in, t, context)

    @staticmethod
    def encode_images(networks: Any, images: jax.Array, keys: jax.Array) -> jax.Array:
        """Scaled latents sampled from the VAE posterior, as diffusers' pipelines encode
        images."""
        return vae_latents.sample_latents(networks[1], images, keys)

    @staticmethod
    def decode_latents(networks: Any, latents: jax.Array) -> jax.Array:
        return vae_latents.decode_latents(networks[1], latents)


def describe_unet_model(
    pipe: Pipeline, unet: nnx.Module, vae: nnx.Module, scheduler_config: dict[str, Any]
) -> Diffusion:
    """Sets what a pipeline of a diffusers UNet and VAE knows of them (the scheduler config, the
    image and latent sizes, the channels); returns the `Diffusion` of the scheduler config."""
    pipe.scheduler_config = dict(scheduler_config)
    pipe.scheduler = SchedulerConfig.from_dict(pipe.scheduler_config)
    pipe.vae_scale_factor = vae.downsample_factor
    unet_arch = dict(unet.architecture)
    pipe.latent_channels = unet_arch["out_channels"]
    pipe.network_in_channels = unet_arch["in_channels"]
    pipe.default_size = unet.sample_size * pipe.vae_scale_factor
    return Diffusion(pipe.scheduler.process, pipe.scheduler.parameterization)
