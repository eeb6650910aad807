"""Stable Diffusion XL on converted diffusers weights: text-to-image, img2img and inpainting on the
shared loop, conditioned as diffusers' SDXL pipelines condition the UNet
(`jaxdiff.pipelines.sdxl_conditioning`).

    pipe = StableDiffusionXL.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    images = pipe("an astronaut riding a horse", num_inference_steps=30, sampler="dpmpp_2m")
    images = pipe("a cat", original_size=(512, 512), crops_coords_top_left=(0, 64))

The micro-conditioning arguments are diffusers' (`original_size`, `crops_coords_top_left`,
`target_size` and their `negative_` forms; the refiner's `aesthetic_score` and
`negative_aesthetic_score`), in pixels, (height, width). The second text encoder reads
`prompt_2` and `negative_prompt_2` where given, else the same prompts as the first;
without a negative prompt a model with `force_zeros_for_empty_prompt` (SDXL's base) guides away
from zero conditioning, not from the empty prompt's.
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

from jaxdiff.errors import UserError, require
from jaxdiff.pipelines import sdxl_conditioning, vae_latents
from jaxdiff.pipelines.base import Grid, Pipeline, Sampling
from jaxdiff.pipelines.prompts import per_prompt_texts, prompt_list, tokenize
from jaxdiff.pipelines.stable_diffusion import describe_unet_model

ZERO_PROMPT = -1  # the ids of a negative prompt the model conditions on zeros for

Networks = tuple[nnx.Module, nnx.Module, nnx.Module | None, nnx.Module]  # unet, vae, encoders


class StableDiffusionXL(Pipeline):
    """Text-to-image (`__call__`), `img2img` and `inpaint` with SDXL's UNet, VAE and two text
    encoders in diffusers' layout (the refiner: the second encoder only, the aesthetic score in
    its micro-conditioning); defaults as diffusers' (50 steps, guidance 5, the scheduler
    config's sigmas)."""

    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"num_inference_steps": 50, "guidance_scale": 5.0, "sampler": "euler"}
    )
    # diffusers' SDXL defaults: the refiner's low noise; inpainting from the noised image
    mode_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
        {"img2img": {"strength": 0.3}, "inpaint": {"strength": 0.9999, "guidance_scale": 7.5}}
    )
    conditioning_arguments: ClassVar[tuple[str, ...]] = (
        "prompt_2",
        "negative_prompt_2",
        "original_size",
        "crops_coords_top_left",
        "target_size",
        "negative_original_size",
        "negative_crops_coords_top_left",
        "negative_target_size",
        "aesthetic_score",
        "negative_aesthetic_score",
    )

    def __init__(
        self,
        unet: nnx.Module,
        vae: nnx.Module,
        text_encoder: nnx.Module | None,
        text_encoder_2: nnx.Module,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler_config: dict[str, Any],
        force_zeros_for_empty_prompt: bool = True,
        requires_aesthetics_score: bool = False,
        devices: Sequence[jax.Device] | None = None,
    ):
        if getattr(unet, "add_embedding", None) is None:
            raise UserError("an SDXL pipeline needs a UNet with addition_embed_type='text_time'")
        if (text_encoder is None) != (tokenizer is None):
            raise UserError("text_encoder and tokenizer: give both (the base) or neither (refiner)")
        if text_encoder_2.text_projection is None:
            raise UserError(
                "text_encoder_2 has no text projection; SDXL's pooled text comes from it"
            )
        _check_added_embedding(unet, text_encoder_2, requires_aesthetics_score)
        self.tokenizers = [t for t in (tokenizer, tokenizer_2) if t is not None]
        lengths = {t.model_max_length for t in self.tokenizers}
        if len(lengths) > 1:
            raise UserError(
                f"the tokenizers' model_max_length differ ({sorted(lengths)}); accepted: one"
            )
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
        self.max_clip_skip = min(len(e.encoder.layers) for e in encoders) - 2
        self.requires_aesthetics_score = requires_aesthetics_score
        diffusion = describe_unet_model(self, unet, vae, scheduler_config)
        vae = vae_latents.upcast_if_forced(vae)  # as diffusers: float32 when marked
        super().__init__((unet, vae, text_encoder, text_encoder_2), diffusion, devices)

    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_hub_id: str | Path,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike | None = None,
        variant: str | None = None,
        devices: Sequence[jax.Device] | None = None,
    ) -> StableDiffusionXL:
        """An SDXL folder or hub id in diffusers' layout (the base, or the refiner without
        `text_encoder`); `dtype` is the networks' compute dtype, `param_dtype` that of their
        weights (default: `dtype`)."""
        from jaxdiff.convert.pipeline_components import load_pipeline_components

        param_dtype = dtype if param_dtype is None else param_dtype
        parts = load_pipeline_components(
            model_dir_or_hub_id, dtype=dtype, param_dtype=param_dtype, variant=variant, sdxl=True
        )
        index = parts.model_index
        return cls(
            parts.unet,
            parts.vae,
            parts.text_encoder,
            parts.text_encoder_2,
            parts.tokenizer,
            parts.tokenizer_2,
            parts.scheduler_config,
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            requires_aesthetics_score=index.get("requires_aesthetics_score", False),
            devices=devices,
        )

    def tokenize(self, prompts: list[str], prompts_2: list[str] | None = None) -> np.ndarray:
        """Each tokenizer's ids side by side, `[N, 2 T]` (the refiner's `[N, T]`): the first
        tokenizer reads `prompts`, the second `prompts_2` (default: `prompts`)."""
        texts = [prompts, prompts if prompts_2 is None else prompts_2][: len(self.tokenizers)]
        return np.concatenate(
            [tokenize(t, x) for t, x in zip(self.tokenizers, texts, strict=True)], axis=1
        )

    def prompt_ids(
        self, prompt: Any, negative_prompt: Any, extra: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each tokenizer's ids side by side (`tokenize`'s layout): the first tokenizer reads
        `prompt` and `negative_prompt`, the second `prompt_2` and `negative_prompt_2` (as
        diffusers: an empty or missing one is the first's; a string applies to every prompt),
        the refiner's only tokenizer the first ones (it refuses `prompt_2`). No negative prompt
        with `force_zeros_for_empty_prompt` gives rows of `ZERO_PROMPT`, which `encode_prompts`
        turns into zero conditioning, whatever `negative_prompt_2` is."""
        prompts = prompt_list(prompt)
        count = len(prompts)
        texts = prompts + per_prompt_texts(negative_prompt, count)
        second = {k: extra.get(k) for k in ("prompt_2", "negative_prompt_2")}
        texts_2 = None
        if len(self.tokenizers) == 1:
            given = sorted(k for k, v in second.items() if v)
            require(
                not given,
                f"{given[0] if given else ''} is for a second tokenizer; this pipeline (a "
                "refiner) has one, which reads prompt and negative_prompt",
            )
        else:
            prompts_2 = per_prompt_texts(second["prompt_2"] or prompt, count, "prompt_2")
            negatives = second["negative_prompt_2"] or negative_prompt
            texts_2 = prompts_2 + per_prompt_texts(negatives, count, "negative_prompt_2")
        ids = self.tokenize(texts, texts_2)
        if negative_prompt is None and self.force_zeros_for_empty_prompt:
            ids[count:] = ZERO_PROMPT
        return ids[:count], ids[count:]

    def grid(self, sampling: Sampling) -> Grid:
        return self.scheduler.call_grid(sampling)

    def conditioning(
        self,
        arguments: dict[str, Any],
        mode: str,
        prompts: int,
        repeat: int,
        size: tuple[int, int],
        keys: jax.Array,
    ) -> dict[str, np.ndarray]:
        """The micro-conditioning of each image, `time_ids` and `negative_time_ids` `[B, 6]`
        (the refiner's `[B, 5]`), defaulted as diffusers' SDXL pipelines do: the sizes to the
        image's, the crops to (0, 0), the refiner's scores to 6 and 2.5. The negative ids:
        text-to-image uses the positive ones unless both negative sizes are given; img2img and
        inpainting default each negative size to its positive one and use the positive crop;
        the refiner uses its negative crop."""
        del keys
        pair = sdxl_conditioning.size_pair

        def given(name: str, default: tuple[float, float] | None) -> tuple[float, float] | None:
            value = arguments.get(name)
            return default if value is None else pair(name, value)

        original = given("original_size", size)
        crops = given("crops_coords_top_left", (0, 0))
        target = given("target_size", size)
        negative_original = given("negative_original_size", None)
        negative_crops = given("negative_crops_coords_top_left", (0, 0))
        negative_target = given("negative_target_size", None)
        if self.requires_aesthetics_score:
            positive = sdxl_conditioning.time_ids(
                original, crops, aesthetic_score=arguments.get("aesthetic_score", 6.0)
            )
            negative = sdxl_conditioning.time_ids(
                negative_original or original,
                negative_crops,
                aesthetic_score=arguments.get("negative_aesthetic_score", 2.5),
            )
        elif mode == "text":
            positive = negative = sdxl_conditioning.time_ids(original, crops, target)
            if negative_original is not None and negative_target is not None:
                negative = sdxl_conditioning.time_ids(
                    negative_original, negative_crops, negative_target
                )
        else:
            positive = sdxl_conditioning.time_ids(original, crops, target)
            negative = sdxl_conditioning.time_ids(
                negative_original or original, crops, negative_target or target
            )
        count = prompts * repeat
        return {
            "time_ids": np.tile(positive, (count, 1)),
            "negative_time_ids": np.tile(negative, (count, 1)),
        }

    @staticmethod
    def step_context(
        context: Any, uncontext: Any, conditioning: Any, step: jax.Array, steps: int
    ) -> tuple[Any, Any]:
        del step, steps
        return (
            (*context, conditioning["time_ids"]),
            (*uncontext, conditioning["negative_time_ids"]),
        )

    @staticmethod
    def encode_prompts(
        networks: Networks, ids: jax.Array, clip_skip: int = 0
    ) -> tuple[jax.Array, jax.Array]:
        """ids `[B, 2 T]` (`tokenize`'s; the refiner's `[B, T]`) -> (the text context
        `[B, T, D1 + D2]`, the pooled text `[B, P]`), zeros for `ZERO_PROMPT` rows."""
        _, _, text_encoder, text_encoder_2 = networks
        zero = ids[:, 0] == ZERO_PROMPT  # [B]
        ids = jnp.maximum(ids, 0)
        first, second = (None, ids) if text_encoder is None else jnp.split(ids, 2, axis=1)
        hidden, pooled = sdxl_conditioning.encode_prompts(
            text_encoder, text_encoder_2, first, second, clip_skip
        )
        return (
            jnp.where(zero[:, None, None], 0.0, hidden),
            jnp.where(zero[:, None], 0.0, pooled),
        )

    @staticmethod
    def predict(networks: Networks, x_in: jax.Array, t: jax.Array, context: Any) -> jax.Array:
        """The UNet's output for `(text context, pooled text, time ids)`."""
        hidden, pooled, time_ids = context
        return networks[0](x_in, t, hidden, text_embeds=pooled, time_ids=time_ids)

    @staticmethod
    def encode_images(networks: Networks, images: jax.Array, keys: jax.Array) -> jax.Array:
        return vae_latents.sample_latents(networks[1], images, keys)

    @staticmethod
    def decode_latents(networks: Networks, latents: jax.Array) -> jax.Array:
        return vae_latents.decode_latents(networks[1], latents)


def _check_added_embedding(
    unet: nnx.Module, text_encoder_2: nnx.Module, requires_aesthetics_score: bool
) -> None:
    """One line unless the UNet's added embedding takes the pooled text and the micro-
    conditioning numbers this pipeline gives (6, or the refiner's 5)."""
    numbers = 5 if requires_aesthetics_score else 6
    per_number = dict(unet.architecture)["addition_time_embed_dim"]
    pooled = text_encoder_2.text_projection.kernel.shape[-1]
    width = unet.add_embedding.linear_1.kernel.shape[0]
    if pooled + numbers * per_number != width:
        raise UserError(
            f"the UNet's added embedding takes {width} features, not {pooled} pooled + {numbers} "
            f"x {per_number} (requires_aesthetics_score={requires_aesthetics_score}); check "
            "model_index.json's requires_aesthetics_score"
        )
