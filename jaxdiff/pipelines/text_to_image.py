"""Prompt to image: tokenize, encode, guide, sample, decode. Wiring only: the math lives in
``jaxdiff.diffusion`` and ``jaxdiff.samplers``.

The whole denoising loop is one jit-compiled function per (sampler, options, steps, batch shape);
prompts, seeds and the guidance scale are traced inputs, so changing them does not recompile.
The batch is split over this process's devices (padded to a multiple of their count). Image ``i``
of a call is image ``first_index + i`` of its seed: it is sampled under ``jax.vmap`` from the key
``fold_in(key(seed), first_index + i)`` alone (its starting noise and a stochastic sampler's
noise), so it does not depend on how many images are made with it, in how many calls, or on how
many devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import parallel, samplers
from jaxdiff.configuration import require
from jaxdiff.diffusion import Diffusion
from jaxdiff.images import to_uint8
from jaxdiff.item_keys import check_first_index, item_keys
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.models.tokenizer import encode


class TextToImagePipeline:
    """Samples images for prompts from a :class:`TextToImageModel`."""

    def __init__(
        self,
        model: TextToImageModel,
        tokenizer,
        diffusion: Diffusion,
        latent_shape: tuple[int, int, int],
        devices: Sequence[jax.Device] | None = None,
    ):
        self.tokenizer = tokenizer
        self.diffusion = diffusion
        self.latent_shape = tuple(latent_shape)  # (h, w, c)
        self.mesh = parallel.local_mesh(devices)
        self._graphdef, state = nnx.split(model)
        self._state = parallel.local_replica(state, self.mesh)

    def __call__(self, prompts: Sequence[str], **sampling) -> np.ndarray:
        """Images ``[len(prompts), H, W, 3]`` uint8, one per prompt; ``sampling`` takes the
        keyword arguments of :meth:`latents` (negative prompts, seed, steps, guidance, sampler,
        schedule and their options, the first image's index)."""
        return self.decode(self.latents(prompts, **sampling))

    def latents(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
        seed: int = 0,
        steps: int = 20,
        guidance: float = 3.0,
        sampler: str = "heun",
        schedule: str = "karras",
        sampler_options: dict | None = None,
        schedule_options: dict | None = None,
        first_index: int = 0,
    ) -> jax.Array:
        """The sampled latents ``[len(prompts), h, w, c]`` float32 that ``__call__`` decodes.

        ``negative_prompts`` (default: the empty prompt) replace the unconditional branch of
        classifier-free guidance (Ho & Salimans 2022); ``guidance`` 1 is the conditional model;
        ``schedule_options`` go to the sigma schedule (``Diffusion.sampling_sigmas``);
        ``first_index``: the index of the call's first image among the images of ``seed``
        (a set made in several calls equals the set made in one).
        """
        prompts = list(prompts)
        require(len(prompts) > 0, "no prompt given; pass at least one prompt")
        negative_prompts = (
            [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
        )
        require(
            len(negative_prompts) == len(prompts),
            f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts; "
            "give one per prompt or none",
        )
        check_sampling(steps, guidance, seed)
        check_first_index(first_index, len(prompts))
        options = dict(sampler_options or {})
        run = self._function(sampler, options)
        sigmas = self.diffusion.sampling_sigmas(steps, schedule, **(schedule_options or {}))
        samplers.check_sigmas(sigmas)
        batch = parallel.split_rows(
            {
                "ids": encode(self.tokenizer, prompts),
                "negative_ids": encode(self.tokenizer, negative_prompts),
                "keys": item_keys(jax.random.key(seed), len(prompts), first_index),
            },
            self.mesh,
        )
        latents = run(
            self._graphdef, self._state, **batch, guidance=jnp.float32(guidance), sigmas=sigmas
        )
        return latents[: len(prompts)]

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Latents ``[B, h, w, c]`` -> images ``[B, H, W, 3]`` uint8, decoded over the devices."""
        rows = parallel.split_rows({"latents": latents}, self.mesh)["latents"]
        decoded = _decode_latents(self._graphdef, self._state, rows)  # [B', H, W, 3]
        return to_uint8(np.asarray(decoded)[: latents.shape[0]])

    def _function(self, sampler: str, options: dict) -> Callable:
        key = (samplers.get(sampler), tuple(sorted(options.items())), self.diffusion)
        return _compiled_run(*key, self.latent_shape)


def check_sampling(steps: int, guidance: float, seed: int, prefix: str = "") -> None:
    """One-line errors for sampling settings; ``prefix`` names them as the caller spells them."""
    require(steps > 0, f"{prefix}steps must be > 0, got {steps}")
    require(guidance >= 0, f"{prefix}guidance must be >= 0, got {guidance}")
    require(0 <= seed < 2**31, f"{prefix}seed must be in [0, 2**31), got {seed}")


@functools.cache
def _compiled_run(
    sample: Callable, options: tuple, diffusion: Diffusion, latent_shape: tuple[int, int, int]
) -> Callable:
    """The jit-compiled sampling loop, shared by every pipeline with the same settings; the model
    structure is a static argument, so new weights (a training preview, say) reuse the code."""

    def run(graphdef, state, ids, negative_ids, keys, guidance, sigmas):
        model = nnx.merge(graphdef, state)
        context = model.encode_text(ids)  # [B, T, D]
        uncond = model.encode_text(negative_ids)  # [B, T, D]
        denoiser = diffusion.denoiser(model.unet)

        def one(context: jax.Array, uncond: jax.Array, key: jax.Array) -> jax.Array:
            """One image from its key: [T, D], [T, D] -> [h, w, c]."""
            noise_key, sampler_key = jax.random.split(key)
            noise = jax.random.normal(noise_key, (1, *latent_shape))  # [1, h, w, c]
            denoise = samplers.cfg(denoiser, context[None], uncond[None], guidance)
            x = sample(denoise, noise * sigmas[0], sigmas, key=sampler_key, **dict(options))
            return x[0]

        return jax.vmap(one)(context, uncond, keys)  # [B, h, w, c]

    return jax.jit(run, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _decode_latents(graphdef, state, latents: jax.Array) -> jax.Array:
    """Latents [B, h, w, c] -> images [B, H, W, 3] in [-1, 1]."""
    return nnx.merge(graphdef, state).decode_latents(latents)
