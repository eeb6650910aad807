"""Latent text-to-image model: a text encoder, a denoiser network (a UNet, or an MMDiT
transformer) and an optional autoencoder; or a class-conditional one, a DiT transformer without a
text encoder.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"): the
denoiser works on ``latent_scale * vae.encode(image)``; without an autoencoder it works on
pixels. The UNet attends to the text encoder's hidden states; the MMDiT (Esser et al. 2024)
also takes its pooled output. The DiT (Peebles & Xie 2023) takes a class label: its prompts'
"token ids" are the labels `[B, 1]` of `jaxdiff.models.class_names`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.clip_text import CLIPTextTransformer
from jaxdiff.models.dit import DiT
from jaxdiff.models.mmdit import MMDiT
from jaxdiff.models.unet import UNet
from jaxdiff.models.vae import AutoencoderKL


class LatentScale(nnx.Variable):
    """A non-trainable scalar saved with the model (the latent normalisation factor)."""


class TextToImageModel(nnx.Module):
    """The three networks of a text-to-image model, and how data flows between them. The
    denoiser is `unet` or, in its place, `transformer` (the other is None); a DiT transformer is
    class-conditional and has no text encoder."""

    def __init__(
        self,
        text_encoder: CLIPTextTransformer | None,
        unet: UNet | None,
        autoencoder: AutoencoderKL | None = None,
        latent_scale: float = 1.0,
        transformer: MMDiT | DiT | None = None,
    ):
        if (unet is None) == (transformer is None):
            raise ValueError("a TextToImageModel takes a UNet or a transformer, one of them")
        if (text_encoder is None) != isinstance(transformer, DiT):
            raise ValueError("a TextToImageModel has a text encoder unless its denoiser is a DiT")
        self.text_encoder = text_encoder
        self.unet = unet
        self.transformer = transformer
        self.autoencoder = autoencoder
        self.latent_scale = LatentScale(jnp.asarray(latent_scale, jnp.float32))

    @property
    def denoiser(self) -> UNet | MMDiT:
        """The denoiser network, the UNet or the transformer."""
        return self.unet if self.transformer is None else self.transformer

    @property
    def class_conditional(self) -> bool:
        """The denoiser takes class labels (a DiT), not text."""
        return self.text_encoder is None

    def encode_text(self, input_ids: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        """Token ids ``[B, T]`` to the denoiser's context: the hidden states ``[B, T, D]`` the
        UNet attends to, or for the MMDiT also the pooled output, ``([B, T, D], [B, D])``; for
        the DiT, the class labels ``([B],)`` of labels ``[B, 1]``."""
        if self.class_conditional:
            return (input_ids[:, 0],)
        out = self.text_encoder(input_ids)
        if self.transformer is None:
            return out.last_hidden_state
        return out.last_hidden_state, out.pooled_output

    def network(self, x: jax.Array, t: jax.Array, context: Any, *conditioning: Any) -> jax.Array:
        """The denoiser network's output for its input ``[B, h, w, c]``, time input and context
        (`encode_text`'s); `conditioning` goes to the UNet (a ControlNet's residuals), which the
        transformers do not take."""
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
