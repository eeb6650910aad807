"""Training a KL autoencoder (Kingma & Welling 2014; the first stage of latent diffusion)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import images
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.errors import check_choice, require
from jaxdiff.models.vae import AutoencoderKL
from jaxdiff.train.tasks import DTYPES

RECONSTRUCTION_LOSSES = ("l1", "l2")
PREVIEW_INDEX = 10**12  # preview and evaluation images come from far beyond any training step


class VAETask:
    """Reconstruction loss plus a small KL term towards N(0, I) on the latent posterior."""

    trainable = nnx.Param

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        loss = config.loss
        check_choice("loss.reconstruction", loss.reconstruction, RECONSTRUCTION_LOSSES)
        require(loss.kl_weight >= 0, f"loss.kl_weight must be >= 0, got {loss.kl_weight}")
        factor = 2 ** (len(config.model.vae.block_out_channels) - 1)
        require(
            config.data.image_size % factor == 0,
            f"data.image_size {config.data.image_size} is not divisible by the autoencoder's "
            f"downsampling factor {factor}; use a multiple of {factor}",
        )
        self.config = config
        self.data = make_dataset(config.data)

    def build_model(self, rngs: nnx.Rngs) -> AutoencoderKL:
        dtype = DTYPES[self.config.model.dtype]
        return AutoencoderKL(**self.config.model.vae, dtype=dtype, rngs=rngs)

    def initialize(self, model: AutoencoderKL, workdir: Path) -> None:
        del model, workdir  # trained from scratch; nothing to load

    def prepare(self, model: AutoencoderKL, workdir: Path) -> None:
        del model, workdir  # nothing to compute from the weights

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": self.data.batch(indices)["image"]}

    def loss(self, model: AutoencoderKL, batch: dict):
        x = batch["image"]  # [B, H, W, 3]
        mean, logvar = model.encode(x)  # [B, h, w, c] each
        mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
        noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(batch["key"])
        z = mean + jnp.exp(0.5 * logvar) * noise
        error = model.decode(z).astype(jnp.float32) - x
        per_example = tuple(range(1, x.ndim))
        if self.config.loss.reconstruction == "l1":
            reconstruction = jnp.mean(jnp.abs(error), axis=per_example)  # [B]
        else:
            reconstruction = jnp.mean(jnp.square(error), axis=per_example)  # [B]
        kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=per_example)
        loss = reconstruction + self.config.loss.kl_weight * kl
        return loss, {"reconstruction": reconstruction, "kl": kl}

    def preview(self, model: AutoencoderKL) -> tuple[np.ndarray, dict[str, str]]:
        """Eight held-back images (top row) over their reconstructions from the posterior mean."""
        originals = self.data.batch(PREVIEW_INDEX + np.arange(8))["image"]
        recon = reconstruct(model, originals)
        pictures = images.to_uint8(np.concatenate([originals, recon]), (-1.0, 1.0))
        return images.grid(pictures, columns=8), {"content": "top: data, bottom: reconstruction"}


@nnx.jit
def reconstruct(model: AutoencoderKL, x: jax.Array) -> jax.Array:
    """Images ``[B, H, W, 3]`` through the posterior mean and back, clipped to [-1, 1]."""
    mean, _ = model.encode(x)
    return jnp.clip(model.decode(mean).astype(jnp.float32), -1.0, 1.0)
