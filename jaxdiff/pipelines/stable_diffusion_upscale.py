"""Stable Diffusion's x4 upscaler (diffusers' `StableDiffusionUpscalePipeline`) on the shared
loop.

    pipe = StableDiffusionUpscale.from_pretrained("stabilityai/stable-diffusion-x4-upscaler")
    large = pipe("a white cat", image=small)      # small [h, w, 3] -> large [1, 4h, 4w, 3]

The low-resolution image is noised to `noise_level` by the model's `low_res_scheduler` (DDPM's
`add_noise` at that timestep), and the level is the UNet's class label; the latents are the
image's size and the UNet sees them with the noised image concatenated. The VAE (three levels,
scaling factor 0.08333) decodes them to 4x the image's size.

    large = pipe("a white cat", image=big, tile_size=128, tile_overlap=32)   # in tiles

An image larger than `max_untiled_size` is upscaled in overlapping tiles (`tile_size`), each on
its own, blended where they overlap (`jaxdiff.pipelines.tiles`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError, require
from jaxdiff.pipelines import image_io, tiles, vae_latents
from jaxdiff.pipelines.base import CONDITIONING_STREAM, Grid, Pipeline, Sampling
from jaxdiff.pipelines.prompts import tokenize
from jaxdiff.pipelines.scheduler_config import SchedulerConfig
from jaxdiff.pipelines.stable_diffusion import StableDiffusion, describe_unet_model

IMAGE_CHANNELS = 3  # the low-resolution image's channels the UNet takes beside the latents
DEFAULT_NOISE_LEVEL = 20  # diffusers' `noise_level` default


class StableDiffusionUpscale(Pipeline):
    """Text-guided 4x upscaling (`__call__(prompt, image=...)`) with a UNet that takes the noise
    level as class labels, a VAE, a CLIP text encoder and the two schedulers in diffusers'
    layout; defaults as diffusers' (75 DDIM steps, guidance 9, `noise_level` 20).

    Call arguments beside `Sampling`'s: `image`, the low-resolution image(s) (one, or one per
    prompt; PIL, uint8 or float in [0, 1]; sides multiples of the UNet's `2 ** (levels - 1)`);
    `noise_level`, an integer in [0, `max_noise_level`]; `image_noise`, the unit noise
    `[B, h, w, 3]` of the image's augmentation (default: each image's own draw, as `latents`
    are). Each image made gets its prompt's image, noised on its own (diffusers repeats a batch
    of several prompts and images out of step with `num_images_per_prompt > 1`).

    `tile_size` (pixels of the low-resolution image, a multiple of the UNet's factor, at most
    `max_untiled_size`, by default twice the UNet's `sample_size`) upscales overlapping tiles
    of that size one by one, neighbours sharing `tile_overlap` pixels (default a quarter of a
    tile): tile k
    of a call is made as a call of its own with the key `fold_in(key, k)` (one tile: the call's
    key, the image untiled), and the upscaled tiles are blended (`tiles.blend`). An image
    larger than `max_untiled_size` needs tiles.
    """

    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"num_inference_steps": 75, "guidance_scale": 9.0, "sampler": "ddim"}
    )
    conditioning_arguments: ClassVar[tuple[str, ...]] = ("image", "noise_level", "image_noise")

    def __init__(
        self,
        unet: nnx.Module,
        vae: nnx.Module,
        text_encoder: nnx.Module,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        low_res_scheduler_config: dict[str, Any],
        max_noise_level: int = 350,
        devices: Sequence[jax.Device] | None = None,
        max_untiled_size: int | None = None,
    ):
        if unet.class_embedding is None:
            raise UserError(
                "an upscaler UNet takes the noise level as class labels; this one has no "
                "num_class_embeds (use StableDiffusion)"
            )
        self.tokenizer = tokenizer
        self.max_clip_skip = len(text_encoder.encoder.layers) - 1
        diffusion = describe_unet_model(self, unet, vae, scheduler_config)
        require(
            self.network_in_channels == self.latent_channels + IMAGE_CHANNELS,
            f"the UNet takes {self.network_in_channels} channels; an upscaler's takes the "
            f"{self.latent_channels} latent channels and the image's {IMAGE_CHANNELS}",
        )
        # The loop's network is `predict`, which concatenates the image itself.
        self.network_in_channels = self.latent_channels
        levels = len(dict(unet.architecture)["block_out_channels"])
        self.size_factor = factor = 2 ** (levels - 1)  # the UNet's: image sides divide by it
        require(
            max_untiled_size is None
            or (
                isinstance(max_untiled_size, int)
                and max_untiled_size > 0
                and max_untiled_size % factor == 0
            ),
            f"max_untiled_size={max_untiled_size!r}; accepted: a positive multiple of {factor} "
            "(the UNet's levels), or None",
        )
        # By default twice the size the UNet was trained at, rounded up to the factor.
        self.max_untiled_size = (
            max_untiled_size or 2 * -(-(unet.sample_size or 64) // factor) * factor
        )
        labels = unet.class_embedding.num_embeddings
        require(
            isinstance(max_noise_level, int) and 0 <= max_noise_level < labels,
            f"max_noise_level={max_noise_level!r}; accepted: 0 to {labels - 1} (the UNet's "
            "class labels)",
        )
        self.max_noise_level = max_noise_level
        self.low_res_scheduler_config = dict(low_res_scheduler_config)
        low_res = SchedulerConfig.from_dict(self.low_res_scheduler_config).process
        self.low_res_alphas_cumprod = low_res.alphas_cumprod  # [T] float64
        require(
            max_noise_level < low_res.num_train_timesteps,
            f"max_noise_level={max_noise_level} is beyond the low_res_scheduler's "
            f"{low_res.num_train_timesteps} timesteps",
        )
        vae = vae_latents.upcast_if_forced(vae)  # as diffusers: float32 when marked
        super().__init__((unet, vae, text_encoder), diffusion, devices)

    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_hub_id: str | Path,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike | None = None,
        variant: str | None = None,
        devices: Sequence[jax.Device] | None = None,
        max_untiled_size: int | None = None,
    ) -> StableDiffusionUpscale:
        """An upscaler folder or hub id in diffusers' layout (`low_res_scheduler/` beside the
        usual components; `max_noise_level` from `model_index.json`); `max_untiled_size` as
        the class takes it."""
        from jaxdiff.convert.pipeline_components import load_pipeline_components

        param_dtype = dtype if param_dtype is None else param_dtype
        parts = load_pipeline_components(
            model_dir_or_hub_id, dtype=dtype, param_dtype=param_dtype, variant=variant, sdxl=False
        )
        if parts.low_res_scheduler_config is None:
            raise UserError(
                f"{model_dir_or_hub_id} has no low_res_scheduler/: not an upscaler; use "
                "StableDiffusion"
            )
        return cls(
            parts.unet,
            parts.vae,
            parts.text_encoder,
            parts.tokenizer,
            parts.scheduler_config,
            parts.low_res_scheduler_config,
            max_noise_level=parts.model_index.get("max_noise_level", 350),
            devices=devices,
            max_untiled_size=max_untiled_size,
        )

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        return tokenize(self.tokenizer, prompts)

    def grid(self, sampling: Sampling) -> Grid:
        return self.scheduler.call_grid(sampling)

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """The images upscaled 4x (see the class); with `tile_size`, tile by tile."""
        if tile_size is None:
            require(tile_overlap is None, "tile_overlap goes with tile_size")
            return super().__call__(prompt, negative_prompt, height, width, **sampling)
        factor = self.size_factor
        require(
            isinstance(tile_size, int)
            and 0 < tile_size <= self.max_untiled_size
            and tile_size % factor == 0,
            f"tile_size={tile_size!r}; accepted: a multiple of {factor} up to "
            f"{self.max_untiled_size}",
        )
        overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        require(
            isinstance(overlap, int) and 0 <= overlap < tile_size,
            f"tile_overlap={tile_overlap!r}; accepted: an integer in [0, {tile_size})",
        )
        given = sorted(k for k in ("latents", "image_noise") if sampling.get(k) is not None)
        require(
            not given,
            f"{given[0] if given else ''} sets one call's noise; with tile_size each tile draws "
            "its own",
        )
        require(
            height is None and width is None,
            f"height={height}, width={width} with tile_size: the image sets them; leave them out",
        )
        require("image" in sampling, "StableDiffusionUpscale upscales an image; give image=")
        images = image_io.as_batch(sampling.pop("image"), "image", IMAGE_CHANNELS)
        output_type = sampling.pop("output_type", "np")
        image_io.check_output_type(output_type)
        require(output_type != "latent", "tile_size gives images; output_type 'latent' is not one")
        root = self.sampling(seed=sampling.pop("seed", 0), key=sampling.pop("key", None))
        _, h, w, _ = images.shape
        corners = [
            (y, x)
            for y in tiles.origins(h, tile_size, overlap)
            for x in tiles.origins(w, tile_size, overlap)
        ]
        made = [
            super(StableDiffusionUpscale, self).__call__(
                prompt,
                negative_prompt,
                image=images[:, y : y + tile_size, x : x + tile_size],
                key=root.root_key if len(corners) == 1 else jax.random.fold_in(root.root_key, k),
                **sampling,
            )
            for k, (y, x) in enumerate(corners)
        ]  # [B, 4 t, 4 t, 3] each
        scale = self.vae_scale_factor
        upscaled = tiles.blend(
            made,
            [(y * scale, x * scale) for y, x in corners],
            (h * scale, w * scale),
            overlap * scale,
        )
        return image_io.to_output(upscaled, output_type)

    def img2img(self, *args: Any, **kwargs: Any) -> np.ndarray | list:
        raise UserError("StableDiffusionUpscale upscales: call it with image= (no img2img)")

    def inpaint(self, *args: Any, **kwargs: Any) -> np.ndarray | list:
        raise UserError("StableDiffusionUpscale upscales: call it with image= (no inpaint)")

    def conditioning_size(self, arguments: dict[str, Any]) -> tuple[int, int]:
        require("image" in arguments, "StableDiffusionUpscale upscales an image; give image=")
        _, height, width, _ = image_io.as_batch(arguments["image"], "image", IMAGE_CHANNELS).shape
        factor = self.size_factor
        require(
            height % factor == 0 and width % factor == 0,
            f"image of size {height}x{width}; accepted: sides that are multiples of {factor} "
            "(the UNet's levels)",
        )
        largest = self.max_untiled_size
        require(
            max(height, width) <= largest,
            f"image of size {height}x{width}; accepted: sides up to {largest} whole, or give "
            f"tile_size= (a multiple of {factor} up to {largest}) to upscale it in tiles",
        )
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    def conditioning(
        self,
        arguments: dict[str, Any],
        mode: str,
        prompts: int,
        repeat: int,
        size: tuple[int, int],
        keys: jax.Array,
    ) -> dict[str, np.ndarray]:
        """Each image's low-resolution image `[B, h, w, 3]`, noised to the level, and the level
        `[B]` (its class label)."""
        del mode
        expected = self.conditioning_size(arguments)
        require(
            size == expected,
            f"height and width {size[0]}x{size[1]}; accepted: {expected[0]}x{expected[1]}, 4x "
            "the image's (or leave them out)",
        )
        level = arguments.get("noise_level", DEFAULT_NOISE_LEVEL)
        require(
            isinstance(level, int | np.integer)
            and not isinstance(level, bool)
            and 0 <= level <= self.max_noise_level,
            f"noise_level={level!r}; accepted: an integer in [0, {self.max_noise_level}]",
        )
        images = np.repeat(image_io.image_batch(arguments["image"], prompts, 1), repeat, axis=0)
        shape = images.shape[1:]  # (h, w, 3)
        noise = arguments.get("image_noise")
        if noise is None:
            noise = _augmentation_noise(keys, shape)
        noise = np.asarray(noise, np.float32)
        require(
            noise.shape == images.shape,
            f"image_noise of shape {noise.shape}; accepted: {images.shape} (images, h, w, 3)",
        )
        alpha = self.low_res_alphas_cumprod[int(level)]
        noised = np.sqrt(alpha) * images + np.sqrt(1.0 - alpha) * noise
        return {
            "image": noised.astype(np.float32),
            "noise_level": np.full(images.shape[0], level, np.int32),
        }

    @staticmethod
    def step_context(
        context: Any, uncontext: Any, conditioning: Any, step: jax.Array, steps: int
    ) -> tuple[Any, Any]:
        del step, steps
        image, level = conditioning["image"], conditioning["noise_level"]
        return (context, image, level), (uncontext, image, level)

    @staticmethod
    def encode_prompts(networks: Any, ids: jax.Array, clip_skip: int = 0) -> jax.Array:
        """The text encoder's hidden state `[B, T, D]`, as `StableDiffusion`'s."""
        return networks[2](ids, skip_last_layers=clip_skip).last_hidden_state

    @staticmethod
    def predict(networks: Any, x_in: jax.Array, t: jax.Array, context: Any) -> jax.Array:
        """The UNet's output for the latents with the noised image concatenated, the text
        context and the noise level as class labels."""
        text, image, level = context
        x_in = jnp.concatenate([x_in, image.astype(x_in.dtype)], axis=-1)
        return networks[0](x_in, t, text, class_labels=level)

    # The networks hold the VAE second, as StableDiffusion's.
    encode_images = staticmethod(StableDiffusion.encode_images)
    decode_latents = staticmethod(StableDiffusion.decode_latents)


@functools.partial(jax.jit, static_argnums=1)
def _augmentation_noise(keys: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """Each image's unit noise for its low-resolution image. keys [B] -> [B, h, w, 3]"""
    return jax.vmap(
        lambda key: jax.random.normal(jax.random.fold_in(key, CONDITIONING_STREAM), shape)
    )(keys)
