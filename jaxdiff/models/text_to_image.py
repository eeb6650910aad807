"""Latent text-to-image model: a text encoder, a UNet denoiser network and an optional autoencoder.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"): the UNet
works on ``latent_scale * vae.encode(image)``; without an autoencoder it works on pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.clip_text import CLIPTextTransformer
from jaxdiff.models.unet import UNet
from jaxdiff.models.vae import AutoencoderKL


class LatentScale(nnx.Variable):
    """A non-trainable scalar saved with the model (the latent normalisation factor)."""


class TextToImageModel(nnx.Module):
    """The three networks of a text-to-image model, and how data flows between them."""

    def __init__(
        self,
        text_encoder: CLIPTextTransformer,
        unet: UNet,
        autoencoder: AutoencoderKL | None = None,
        latent_scale: float = 1.0,
    ):
        self.text_encoder = text_encoder
        self.unet = unet
        self.autoencoder = autoencoder
        self.latent_scale = LatentScale(jnp.asarray(latent_scale, jnp.float32))

    def encode_text(self, input_ids: jax.Array) -> jax.Array:
        """Token ids ``[B, T]`` to the UNet's cross-attention context ``[B, T, D]``."""
        return self.text_encoder(input_ids).last_hidden_state

    def encode_images(self, images: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """Images ``[B, H, W, 3]`` in [-1, 1] to scaled latents ``[B, h, w, c]``.

        With one PRNG key per image (keys ``[B]``), a sample of the autoencoder's posterior;
        without, its mean. No gradient flows into the autoencoder.
        """
        if self.autoencoder is None:
            return images
        return self.sample_latents(*self.autoencoder.encode(images), keys)

    def sample_latents(
        self, mean: jax.Array, logvar: jax.Array, keys: jax.Array | None = None
    ) -> jax.Array:
        """Scaled latents ``[B, h, w, c]`` from the autoencoder's posterior moments (each
        ``[B, h, w, c]``): a sample with one PRNG key per image, the mean without."""
        latents = mean
        if keys is not None:
            noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
            latents = mean + jnp.exp(0.5 * logvar) * noise
        return jax.lax.stop_gradient(latents * self.latent_scale[...])

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Scaled latents ``[B, h, w, c]`` to images ``[B, H, W, 3]`` in [-1, 1] (clipped)."""
        if self.autoencoder is None:
            return jnp.clip(latents, -1.0, 1.0)
        images = self.autoencoder.decode(latents / self.latent_scale[...])
        return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
