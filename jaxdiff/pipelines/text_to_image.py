"""Prompt to image: tokenize, encode, guide, sample, decode. Wiring only: the math lives in
``jaxdiff.diffusion`` and ``jaxdiff.samplers``.

The whole denoising loop is one jit-compiled function per (sampler, options, steps, batch shape);
prompts, seeds and the guidance scale are traced inputs, so changing them does not recompile.
Image ``i`` of a call starts from the noise of ``fold_in(noise_key(seed), i)``: it does not
depend on how many images are made with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import samplers
from jaxdiff.configuration import require
from jaxdiff.diffusion import Diffusion
from jaxdiff.images import to_uint8
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
    ):
        self.tokenizer = tokenizer
        self.diffusion = diffusion
        self.latent_shape = tuple(latent_shape)  # (h, w, c)
        self._graphdef, self._state = nnx.split(model)

    def __call__(self, prompts: Sequence[str], **sampling) -> np.ndarray:
        """Images ``[len(prompts), H, W, 3]`` uint8, one per prompt; ``sampling`` takes the
        keyword arguments of :meth:`latents` (negative prompts, seed, steps, guidance, sampler,
        schedule and their options)."""
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
    ) -> jax.Array:
        """The sampled latents ``[len(prompts), h, w, c]`` float32 that ``__call__`` decodes.

        ``negative_prompts`` (default: the empty prompt) replace the unconditional branch of
        classifier-free guidance (Ho & Salimans 2022); ``guidance`` 1 is the conditional model;
        ``schedule_options`` go to the sigma schedule (``Diffusion.sampling_sigmas``).
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
        options = dict(sampler_options or {})
        run = self._function(sampler, options)
        sigmas = self.diffusion.sampling_sigmas(steps, schedule, **(schedule_options or {}))
        samplers.check_sigmas(sigmas)
        ids = jnp.asarray(encode(self.tokenizer, prompts))
        negative_ids = jnp.asarray(encode(self.tokenizer, negative_prompts))
        return run(
            self._graphdef,
            self._state,
            ids,
            negative_ids,
            jnp.int32(seed),
            jnp.float32(guidance),
            sigmas,
        )

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Latents ``[B, h, w, c]`` -> images ``[B, H, W, 3]`` uint8."""
        return to_uint8(np.asarray(_decode(self._graphdef, self._state, latents)))

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

    def run(graphdef, state, ids, negative_ids, seed, guidance, sigmas):
        model = nnx.merge(graphdef, state)
        context = model.encode_text(ids)  # [B, T, D]
        uncond = model.encode_text(negative_ids)  # [B, T, D]
        denoise = samplers.cfg(diffusion.denoiser(model.unet), context, uncond, guidance)
        noise_root, sampler_key = jax.random.split(jax.random.key(seed))
        noise = jax.vmap(
            lambda i: jax.random.normal(jax.random.fold_in(noise_root, i), latent_shape)
        )(jnp.arange(ids.shape[0]))  # [B, h, w, c]
        return sample(denoise, noise * sigmas[0], sigmas, key=sampler_key, **dict(options))

    return jax.jit(run, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, latents: jax.Array) -> jax.Array:
    """Latents [B, h, w, c] -> images [B, H, W, 3] in [-1, 1]."""
    return nnx.merge(graphdef, state).decode_latents(latents)
