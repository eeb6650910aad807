"""The compiled body of the Stable Diffusion pipelines: prompts, noise (and image, mask) in,
images out, in one `jax.jit` function per `LoopSettings` and input shapes.

Wiring only: the process and parameterization are a `Diffusion`, guidance is `samplers.cfg`
applied to the network, inpainting with a standard UNet is `samplers.reimpose_known`, a
9-channel inpainting UNet gets the mask and masked-image latents as extra input channels, and the
sampler is any of the zoo. Each image is sampled under `jax.vmap` with its own key, so its noise,
its VAE posterior sample and a stochastic sampler's noise do not depend on the batch.

Traced inputs (changing them does not recompile): token ids, keys, noise, images, masks, the
guidance scale and rescale, the sigmas. Static: everything in `LoopSettings`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff import samplers
from jaxdiff.diffusion import Diffusion
from jaxdiff.samplers.inpainting import blend_known, reimpose_known
from jaxdiff.samplers.x0_limits import clip_denoised, threshold_denoised

# How the run starts and what the UNet sees: "text" (noise), "img2img" (the noised image),
# "inpaint" (standard UNet, known region re-imposed), "inpaint_channels" (9-channel UNet).
MODES = ("text", "img2img", "inpaint", "inpaint_channels")


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """Everything the compiled loop is specialised on."""

    graphdef: Any  # nnx.GraphDef of (unet, vae, text_encoder)
    sampler: str
    options: tuple[tuple[str, Any], ...]
    diffusion: Diffusion
    integer_timesteps: bool
    guided: bool  # classifier-free guidance on (diffusers: guidance_scale > 1)
    mode: str
    from_noise: bool  # start from pure noise (text, or inpainting with strength 1)
    clip_sample_range: float | None
    threshold: tuple[float, float] | None


@functools.partial(jax.jit, static_argnums=1)
def draw_noise(keys: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """The initial unit noise of each image from its key. keys [B] -> [B, h, w, c]"""
    return jax.vmap(lambda k: jax.random.normal(_split(k)[0], shape))(keys)


def _split(key: jax.Array) -> jax.Array:
    """An image's key -> keys for its noise, image posterior, masked-image posterior, sampler."""
    return jax.random.split(key, 4)


def _posterior_sample(vae, images: jax.Array, keys: jax.Array) -> jax.Array:
    """Scaled latents sampled from the VAE posterior, as diffusers' pipelines encode images.
    images [B, H, W, 3] in [-1, 1], keys [B] -> [B, h, w, c] float32"""
    mean, logvar = vae.encode(images)  # [B, h, w, c] each
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(keys)
    return (mean + jnp.exp(0.5 * logvar) * eps) * vae.scaling_factor


def _limited(denoise: samplers.Denoise, settings: LoopSettings) -> samplers.Denoise:
    if settings.threshold is not None:
        return threshold_denoised(denoise, *settings.threshold)
    if settings.clip_sample_range is not None:
        return clip_denoised(denoise, settings.clip_sample_range)
    return denoise


@functools.cache
def compiled_loop(settings: LoopSettings) -> Callable:
    """`run(state, ids, negative_ids, keys, noise, guidance, rescale, sigmas, start_std, images,
    masks) -> (images [B, H, W, 3] float32 in [0, 1], latents [B, h, w, c])`, jit-compiled.

    ids, negative_ids: [B, T]; keys: [B]; noise: [B, h, w, c] unit noise; sigmas: [n + 1];
    start_std: [] the std of the pure noise a run from noise starts with (`Grid.start_std`);
    images: [B, H, W, 3] in [-1, 1] and masks [B, H, W, 1] (1: paint), or None for "text".
    """
    sample = samplers.get(settings.sampler)
    options = dict(settings.options)
    inpainting = settings.mode in ("inpaint", "inpaint_channels")

    def run(
        state, ids, negative_ids, keys, noise, guidance, rescale, sigmas, start_std, images, masks
    ):
        unet, vae, text_encoder = nnx.merge(settings.graphdef, state)
        if settings.guided:
            both = text_encoder(jnp.concatenate([ids, negative_ids])).last_hidden_state
            context, uncontext = jnp.split(both, 2)  # [B, T, D] each
        else:
            context = uncontext = text_encoder(ids).last_hidden_state  # [B, T, D]
        split = jax.vmap(_split)(keys)  # [B, 4]
        per_image: dict[str, jax.Array] = {
            "noise": noise,
            "context": context,
            "uncontext": uncontext,
            "key": split[:, 3],
        }
        if settings.mode in ("img2img", "inpaint") or not settings.from_noise:
            per_image["known"] = _posterior_sample(vae, images, split[:, 1])
        if inpainting:
            f = vae.downsample_factor
            per_image["mask"] = masks[:, ::f, ::f, :]  # [B, h, w, 1], nearest as diffusers
        if settings.mode == "inpaint_channels":
            masked = images * (masks < 0.5)
            per_image["masked"] = _posterior_sample(vae, masked, split[:, 2])

        def one(inputs: dict[str, jax.Array]) -> jax.Array:
            """One image: every array with a batch axis of 1."""
            one_ = {k: v[None] for k, v in inputs.items() if k != "key"}

            def net(x_in: jax.Array, t: jax.Array, ctx: jax.Array) -> jax.Array:
                t = jnp.round(t) if settings.integer_timesteps else t
                if settings.mode == "inpaint_channels":
                    extra = jnp.concatenate([one_["mask"], one_["masked"]], axis=-1)
                    x_in = jnp.concatenate(
                        [x_in, jnp.broadcast_to(extra, x_in.shape[:1] + extra.shape[1:])], -1
                    )
                return unet(x_in, t, ctx)

            scale = guidance if settings.guided else 1
            guided = samplers.cfg(net, one_["context"], one_["uncontext"], scale, rescale)
            denoise = _limited(settings.diffusion.denoiser(guided), settings)
            if settings.mode == "inpaint":
                denoise = reimpose_known(
                    denoise, one_["known"], one_["mask"], one_["noise"], sigmas[0]
                )
            if settings.from_noise:
                start = one_["noise"] * start_std
            else:
                start = one_["known"] + one_["noise"] * sigmas[0]
            x = sample(denoise, start, sigmas, key=inputs["key"], **options)
            # The VP state, which diffusers decodes, where the grid ends above sigma = 0.
            x = x * settings.diffusion.process.c_in(sigmas[-1])
            if settings.mode == "inpaint":
                x = blend_known(x, one_["known"], one_["mask"])
            return x[0]

        latents = jax.vmap(one)(per_image)  # [B, h, w, c]
        decoded = vae.decode(latents / vae.scaling_factor).astype(jnp.float32)
        return jnp.clip(decoded / 2.0 + 0.5, 0.0, 1.0), latents

    return jax.jit(run)
