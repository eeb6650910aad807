"""Latent text-to-image model: a text encoder, a denoiser network (a UNet, or an MMDiT
transformer) and an optional autoencoder.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"): the
denoiser works on ``latent_scale * vae.encode(image)``; without an autoencoder it works on
pixels. The UNet attends to the text encoder's hidden states; the MMDiT (Esser et al. 2024)
also takes its pooled output.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.clip_text import CLIPTextTransformer
from jaxdiff.models.mmdit import MMDiT
from jaxdiff.models.unet import UNet
from jaxdiff.models.vae import AutoencoderKL


class LatentScale(nnx.Variable):
    """A non-trainable scalar saved with the model (the latent normalisation factor)."""


class TextToImageModel(nnx.Module):
    """The three networks of a text-to-image model, and how data flows between them. The
    denoiser is `unet` or, in its place, `transformer` (the other is None)."""

    def __init__(
        self,
        text_encoder: CLIPTextTransformer,
        unet: UNet | None,
        autoencoder: AutoencoderKL | None = None,
        latent_scale: float = 1.0,
        transformer: MMDiT | None = None,
    ):
        if (unet is None) == (transformer is None):
            raise ValueError("a TextToImageModel takes a UNet or a transformer, one of them")
        self.text_encoder = text_encoder
        self.unet = unet
        self.transformer = transformer
        self.autoencoder = autoencoder
        self.latent_scale = LatentScale(jnp.asarray(latent_scale, jnp.float32))

    @property
    def denoiser(self) -> UNet | MMDiT:
        """The denoiser network, the UNet or the transformer."""
        return self.unet if self.transformer is None else self.transformer

    def encode_text(self, input_ids: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Token ids ``[B, T]`` to the denoiser's context: the hidden states ``[B, T, D]`` the
        UNet attends to, or for the transformer also the pooled output, ``([B, T, D],
        [B, D])``."""
        out = self.text_encoder(input_ids)
        if self.transformer is None:
            return out.last_hidden_state
        return out.last_hidden_state, out.pooled_output

    def network(self, x: jax.Array, t: jax.Array, context: Any, *conditioning: Any) -> jax.Array:
        """The denoiser network's output for its input ``[B, h, w, c]``, time input and context
        (`encode_text`'s); `conditioning` goes to the UNet (a ControlNet's residuals), which the
        transformer does not take."""
        if self.transformer is None:
            return self.unet(x, t, context, *conditioning)
        if conditioning:
            raise ValueError("the transformer denoiser takes no ControlNet residuals")
        return self.transformer(x, t, *context)

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
