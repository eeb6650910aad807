"""Images to a KL autoencoder's scaled latents and back, as diffusers' pipelines do."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.vae import AutoencoderKL


def sample_latents(vae: AutoencoderKL, images: jax.Array, keys: jax.Array) -> jax.Array:
    """Images `[B, H, W, 3]` in [-1, 1] -> latents `[B, h, w, c]` float32 drawn from the
    posterior with one key per image, times the autoencoder's scaling factor."""
    mean, logvar = vae.encode(images)  # [B, h, w, c] each
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(keys)
    return (mean + jnp.exp(0.5 * logvar) * eps) * vae.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: jax.Array) -> jax.Array:
    """Scaled latents `[B, h, w, c]` -> images `[B, H, W, 3]` float32 in about [-1, 1]."""
    return vae.decode(latents / vae.scaling_factor).astype(jnp.float32)


def upcast_if_forced(vae: AutoencoderKL) -> AutoencoderKL:
    """The autoencoder in float32 (compute and weights) when it is marked `force_upcast` and
    computes in a 16-bit dtype, as diffusers' SDXL and upscaler pipelines encode and decode with
    such a VAE (in float16 it overflows); otherwise `vae` itself."""
    if not vae.force_upcast or jnp.dtype(vae.dtype).itemsize >= 4:
        return vae
    upcast = nnx.eval_shape(lambda: AutoencoderKL(**dict(vae.architecture), rngs=nnx.Rngs(0)))
    nnx.update(upcast, jax.tree.map(lambda a: a.astype(jnp.float32), nnx.state(vae)))
    return upcast
