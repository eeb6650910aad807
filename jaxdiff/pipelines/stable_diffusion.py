"""Stable Diffusion text-to-image, img2img and inpainting on converted diffusers weights.

    pipe = StableDiffusion.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    images = pipe("an astronaut riding a horse", num_inference_steps=30, sampler="dpmpp_2m")
    edited = pipe.img2img("a watercolor painting", image, strength=0.6)
    filled = pipe.inpaint("a cat on a bench", image, mask)

The model's scheduler config decides the process, the prediction type and the timesteps
(`SchedulerConfig`); `sampler` picks any sampler of the zoo, on the grid its diffusers
counterpart would use. The batch of images is split over every local device on a `data` mesh
axis (padded to a multiple of the device count); image i of a call starts from the key
`fold_in(key, first_index + i)` (`first_index` 0 by default), so it is the same whatever the
batch size, the number of calls a set is made in, or the number of devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff import parallel, samplers
from jaxdiff.configuration import require
from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError
from jaxdiff.item_keys import check_first_index, item_keys
from jaxdiff.pipelines import image_io
from jaxdiff.pipelines.latent_loop import LoopSettings, compiled_loop, draw_noise
from jaxdiff.pipelines.prompts import negative_prompt_list, prompt_list, tokenize
from jaxdiff.pipelines.scheduler_config import SchedulerConfig


@dataclasses.dataclass
class _Sampling:
    """The settings every pipeline call shares, checked."""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    sampler: str = "ddim"
    sampler_options: dict[str, Any] | None = None
    sigma_schedule: str | None = None
    seed: int = 0
    key: jax.Array | None = None
    first_index: int = 0
    latents: Any = None
    num_images_per_prompt: int = 1
    output_type: str = "np"

    def __post_init__(self) -> None:
        steps = self.num_inference_steps
        require(
            isinstance(steps, int | np.integer) and not isinstance(steps, bool) and steps > 0,
            f"num_inference_steps={steps!r} must be a positive integer",
        )
        require(self.guidance_scale >= 0, f"guidance_scale={self.guidance_scale} must be >= 0")
        require(
            0.0 <= self.guidance_rescale <= 1.0,
            f"guidance_rescale={self.guidance_rescale} must be in [0, 1]",
        )
        count = self.num_images_per_prompt
        require(
            isinstance(count, int) and count > 0,
            f"num_images_per_prompt={count!r} must be a positive integer",
        )
        require(
            self.key is not None or (isinstance(self.seed, int) and 0 <= self.seed < 2**32),
            f"seed={self.seed!r} must be an integer in [0, 2**32) (or pass key=)",
        )
        image_io.check_output_type(self.output_type)
        options = dict(self.sampler_options or {})
        accepted = samplers.option_defaults(self.sampler)  # also checks the name
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise UserError(
                f"sampler {self.sampler!r} does not take option {unknown[0]!r}; accepted: "
                f"{', '.join(accepted) or 'none'}"
            )
        for name, value in options.items():
            require(
                isinstance(value, bool | int | float | str),
                f"sampler option {name}={value!r}: the pipelines take numbers and strings "
                "(they are compiled into the loop)",
            )


class StableDiffusion:
    """Text-to-image (`__call__`), `img2img` and `inpaint` with one set of networks."""

    def __init__(
        self,
        unet: nnx.Module,
        vae: nnx.Module,
        text_encoder: nnx.Module,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        devices: Sequence[jax.Device] | None = None,
    ):
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.scheduler = SchedulerConfig.from_dict(self.scheduler_config)
        self.diffusion = Diffusion(self.scheduler.process, self.scheduler.parameterization)
        self.vae_scale_factor = vae.downsample_factor
        unet_arch = dict(unet.architecture)
        self.latent_channels = unet_arch["out_channels"]
        self.unet_in_channels = unet_arch["in_channels"]
        self.default_size = unet.sample_size * self.vae_scale_factor
        self.mesh = parallel.local_mesh(devices)
        self._graphdef, state = nnx.split((unet, vae, text_encoder))
        self._state = parallel.local_replica(state, self.mesh)

    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_hub_id: str | Path,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike | None = None,
        variant: str | None = None,
        devices: Sequence[jax.Device] | None = None,
    ) -> StableDiffusion:
        """A diffusers-format Stable Diffusion folder or hub id (see
        `jaxdiff.convert.load_pipeline_components`); `dtype` is the networks' compute dtype,
        `param_dtype` that of their weights (default: `dtype`)."""
        from jaxdiff.convert.pipeline_components import load_pipeline_components

        parts = load_pipeline_components(
            model_dir_or_hub_id,
            dtype=dtype,
            param_dtype=dtype if param_dtype is None else param_dtype,
            variant=variant,
        )
        return cls(
            parts.unet,
            parts.vae,
            parts.text_encoder,
            parts.tokenizer,
            parts.scheduler_config,
            devices=devices,
        )

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """Images for `prompt`: float32 `[B, H, W, 3]` in [0, 1] (`output_type="np"`) or PIL
        images ("pil"), B = prompts x `num_images_per_prompt`.

        `sampling`: num_inference_steps=50, guidance_scale=7.5 (classifier-free guidance when
        > 1, as diffusers), guidance_rescale=0.0, sampler="ddim" (any of `samplers.names()`),
        sampler_options (the sampler's own options), sigma_schedule (None: the scheduler
        config's; "discrete" or "karras"), seed=0 or key, first_index=0 (image i uses
        `fold_in(key, first_index + i)`), latents (unit noise `[B, h, w, c]`),
        num_images_per_prompt=1, output_type="np".
        """
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        image_io.check_size(height, width, self.vae_scale_factor)
        self._require_channels("text-to-image", self.latent_channels)
        shape = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        return self._generate(prompt, negative_prompt, _Sampling(**sampling), "text", shape)

    def img2img(
        self,
        prompt: str | Sequence[str],
        image: Any,
        strength: float = 0.8,
        negative_prompt: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """Images for `prompt` starting from `image` (one, or one per prompt) noised to the
        level `strength` of the way up the schedule (SDEdit, Meng et al. 2022): the last
        `int(num_inference_steps * strength)` steps are run. Other arguments as `__call__`."""
        self._require_channels("img2img", self.latent_channels)
        return self._generate(
            prompt, negative_prompt, _Sampling(**sampling), "img2img", None, image, None, strength
        )

    def inpaint(
        self,
        prompt: str | Sequence[str],
        image: Any,
        mask: Any,
        strength: float = 1.0,
        negative_prompt: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """`image` repainted where `mask` is white (>= 0.5). A 9-channel inpainting UNet gets the
        mask and the masked image's latents as input channels; a standard UNet keeps the known
        region, re-imposed at every noise level. `strength` < 1 starts from the noised image
        instead of pure noise. Other arguments as `__call__`."""
        channels = self.unet_in_channels
        if channels == self.latent_channels + self.latent_channels + 1:
            mode = "inpaint_channels"
        else:
            self._require_channels("inpaint", self.latent_channels)
            mode = "inpaint"
        return self._generate(
            prompt, negative_prompt, _Sampling(**sampling), mode, None, image, mask, strength
        )

    def _require_channels(self, what: str, expected: int) -> None:
        if self.unet_in_channels != expected:
            raise UserError(
                f"{what} needs a UNet with {expected} input channels; this one has "
                f"{self.unet_in_channels} (use inpaint with a 9-channel inpainting UNet)"
            )

    def _generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None,
        sampling: _Sampling,
        mode: str,
        latent_size: tuple[int, int] | None,
        image: Any = None,
        mask: Any = None,
        strength: float = 1.0,
    ) -> np.ndarray | list:
        prompts = prompt_list(prompt)
        negatives = negative_prompt_list(negative_prompt, len(prompts))
        repeat = sampling.num_images_per_prompt
        count = len(prompts) * repeat
        images = masks = None
        if mode != "text":
            require(0.0 < strength <= 1.0, f"strength={strength} must be in (0, 1]")
            images = image_io.image_batch(image, len(prompts), self.vae_scale_factor)
            if mask is not None:
                masks = np.repeat(image_io.mask_batch(mask, images), repeat, axis=0)  # [B, H, W, 1]
            images = np.repeat(images, repeat, axis=0)  # [B, H, W, 3]
            latent_size = (
                images.shape[1] // self.vae_scale_factor,
                images.shape[2] // self.vae_scale_factor,
            )
        grid = self.scheduler.grid(
            sampling.sampler, sampling.num_inference_steps, sampling.sigma_schedule
        )
        sigmas = self._sigmas(grid.sigmas, strength, mode)
        ids = np.repeat(tokenize(self.tokenizer, prompts), repeat, axis=0)  # [B, T]
        negative_ids = np.repeat(tokenize(self.tokenizer, negatives), repeat, axis=0)
        latent_shape = (*latent_size, self.latent_channels)
        root = sampling.key if sampling.key is not None else jax.random.key(sampling.seed)
        check_first_index(sampling.first_index, count)
        keys = item_keys(root, count, sampling.first_index)  # [B]
        noise = self._noise(sampling.latents, keys, latent_shape)  # [B, h, w, c]
        clip_range, threshold = self.scheduler.x0_limits(sampling.sampler)
        settings = LoopSettings(
            graphdef=self._graphdef,
            sampler=sampling.sampler,
            options=tuple(sorted((sampling.sampler_options or {}).items())),
            diffusion=self.diffusion,
            integer_timesteps=grid.integer_timesteps,
            guided=sampling.guidance_scale > 1.0,
            mode=mode,
            from_noise=mode == "text" or (mode != "img2img" and strength == 1.0),
            clip_sample_range=clip_range,
            threshold=threshold,
        )
        batch = parallel.split_rows(
            dict(
                ids=ids,
                negative_ids=negative_ids,
                keys=keys,
                noise=noise,
                images=images,
                masks=masks,
            ),
            self.mesh,
        )
        out, _ = compiled_loop(settings)(
            self._state,
            guidance=jnp.float32(sampling.guidance_scale),
            rescale=jnp.float32(sampling.guidance_rescale),
            sigmas=jnp.asarray(sigmas, jnp.float32),
            start_std=jnp.float32(grid.start_std),
            **batch,
        )
        return image_io.to_output(np.asarray(out)[:count], sampling.output_type)

    @staticmethod
    def _sigmas(sigmas: np.ndarray, strength: float, mode: str) -> np.ndarray:
        """The run's sigmas: the whole grid `[n + 1]`, or its last `int(n * strength)` steps
        (diffusers' `get_timesteps`) when starting from an image."""
        n = sigmas.shape[0] - 1
        if mode == "text":
            return sigmas
        steps = min(int(n * strength), n)
        if steps < 1:
            raise UserError(
                f"strength={strength} with num_inference_steps={n} leaves no step to run; "
                "raise one of them so that num_inference_steps * strength >= 1"
            )
        return sigmas[n - steps :]

    def _noise(self, latents: Any, keys: jax.Array, shape: tuple[int, int, int]) -> np.ndarray:
        """The given unit noise `[B, h, w, c]`, checked, or each image's own draw."""
        if latents is None:
            return np.asarray(draw_noise(keys, shape))
        latents = np.asarray(latents, np.float32)
        want = (keys.shape[0], *shape)
        require(
            latents.shape == want,
            f"latents of shape {latents.shape}; accepted: {want} (images, h, w, channels)",
        )
        return latents
