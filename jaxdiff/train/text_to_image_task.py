"""Training a text-conditioned (latent) diffusion model with caption dropout for guidance.

The text encoder and the denoiser (``model.denoiser``: the UNet of ``model.unet``, or the MMDiT
transformer of ``model.mmdit``) are trained together from scratch; the autoencoder, when the config
names a trained one (``vae_workdir``), is frozen and copied into this run's checkpoints, so the
workdir is self-contained. With ``vae_workdir = ""`` the model works on pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff.atomic_write import atomic_path, write_atomically
from jaxdiff.configuration import from_dict, from_json
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.diffusion import Diffusion, make_process
from jaxdiff.errors import UserError, check_choice, require
from jaxdiff.models.clip_text import CLIPTextTransformer
from jaxdiff.models.controlnet import ControlNet
from jaxdiff.models.mmdit import MMDiT
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.models.tokenizer import (
    build_tokenizer,
    encode,
    load_word_tokenizer,
    save_tokenizer,
)
from jaxdiff.models.unet import UNet
from jaxdiff.models.vae import AutoencoderKL
from jaxdiff.pipelines.text_to_image import TextToImagePipeline
from jaxdiff.train.tasks import DTYPES, image_preview, split_keys, validate_sample
from jaxdiff.workdir import checkpoint_step, restore_weights, saved_config_dict

DENOISERS = ("unet", "mmdit")  # model.denoiser: the network configured by model.unet / model.mmdit
# The MMDiT arguments the task derives from the latents and the text encoder.
MMDIT_FROM_TASK = (
    "sample_size",
    "in_channels",
    "out_channels",
    "joint_attention_dim",
    "caption_projection_dim",
    "pooled_projection_dim",
    "pos_embed_max_size",
)
AUTOENCODER_FILE = "autoencoder.json"  # the frozen autoencoder's architecture, beside its weights
TOKENIZER_DIR = "tokenizer"
LATENT_SCALE_IMAGES = 1024  # images encoded to measure the latent standard deviation
PIXEL_SPACE_NOTE = (
    "training on pixels (vae_workdir is empty); to train in latent space, add "
    "--config.vae_workdir=DIR, the workdir of a trained autoencoder (e.g. of --config shapes_vae)"
)


class TextToImageTask:
    """Denoising loss on (latent) images conditioned on their captions."""

    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("autoencoder")))

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        self.config = config
        self.data = make_dataset(config.data)
        saved_tokenizer = workdir is not None and (workdir / TOKENIZER_DIR).is_dir()
        self.tokenizer = (
            load_word_tokenizer(workdir / TOKENIZER_DIR)
            if saved_tokenizer
            else build_tokenizer(
                self.data.vocabulary(),
                config.model.text.max_position_embeddings,
                self.data.word_groups(),
            )
        )
        self.autoencoder_config = _autoencoder_config(config, workdir)
        self.pixel_space = self.autoencoder_config is None  # no autoencoder: it works on pixels
        factor = 1
        if self.autoencoder_config is not None:
            factor = 2 ** (len(self.autoencoder_config.block_out_channels) - 1)
        size = config.data.image_size
        require(
            size % factor == 0,
            f"data.image_size {size} is not divisible by the autoencoder's downsampling factor "
            f"{factor}; use a multiple of {factor}",
        )
        self.vae_scale_factor = factor  # image pixels per latent pixel
        channels = 3 if self.autoencoder_config is None else self.autoencoder_config.latent_channels
        self.latent_shape = (size // factor, size // factor, channels)
        # A config without the field trains a UNet (runs saved before the field existed resume).
        self.denoiser_name = config.model.get("denoiser", "unet")
        check_choice("model.denoiser", self.denoiser_name, DENOISERS)
        if self.denoiser_name == "mmdit":
            for key in sorted(set(config.model.mmdit) & set(MMDIT_FROM_TASK)):
                raise UserError(
                    f"model.mmdit.{key} is set by the task from the data and the text encoder; "
                    f"accepted: MMDiT options other than {', '.join(MMDIT_FROM_TASK)}"
                )
        if self.denoiser_name == "unet":
            levels = len(config.model.unet.block_out_channels)
            unet_factor = 2 ** (levels - 1)
            require(
                self.latent_shape[0] % unet_factor == 0,
                f"the UNet's {levels} levels need a latent size divisible by {unet_factor}, got "
                f"{self.latent_shape[0]}",
            )
        require(
            0.0 <= config.train.caption_dropout < 1.0,
            f"train.caption_dropout must be in [0, 1), got {config.train.caption_dropout}",
        )
        validate_sample(config)
        self.diffusion = Diffusion(
            process=make_process(config.diffusion.process, **config.diffusion.process_options),
            parameterization=config.diffusion.parameterization,
            weighting=config.diffusion.weighting,
            min_snr_gamma=config.diffusion.min_snr_gamma,
        )
        self.unconditional_ids = encode(self.tokenizer, [""])  # [1, T]
        self.text_ids(list(config.sample.preview_prompts))  # unknown words fail now, not later

    def build_model(self, rngs: nnx.Rngs) -> TextToImageModel:
        model = self.config.model
        dtype = DTYPES[model.dtype]
        text_encoder = CLIPTextTransformer(
            vocab_size=len(self.tokenizer),
            eos_token_id=self.tokenizer.eos_token_id,
            **model.text,
            dtype=dtype,
            rngs=rngs,
        )
        channels = self.latent_shape[-1]
        common = dict(
            in_channels=channels,
            out_channels=channels,
            dtype=dtype,
            remat=self.config.train.remat,
            rngs=rngs,
        )
        unet = transformer = None
        if self.denoiser_name == "unet":
            unet = UNet(cross_attention_dim=model.text.hidden_size, **model.unet, **common)
        else:
            size = self.latent_shape[0]
            width = model.mmdit.num_attention_heads * model.mmdit.attention_head_dim
            transformer = MMDiT(
                sample_size=size,
                joint_attention_dim=model.text.hidden_size,
                caption_projection_dim=width,
                pooled_projection_dim=model.text.hidden_size,
                pos_embed_max_size=size // model.mmdit.patch_size,
                **model.mmdit,
                **common,
            )
        autoencoder = None
        if self.autoencoder_config is not None:
            autoencoder = AutoencoderKL(**self.autoencoder_config, dtype=dtype, rngs=rngs)
        return TextToImageModel(text_encoder, unet, autoencoder, transformer=transformer)

    def initialize(self, model: TextToImageModel, workdir: Path) -> None:
        """Saves the tokenizer; loads the trained autoencoder and measures the latent scale."""
        self.save_description(workdir)
        if model.autoencoder is None:
            if jax.process_index() == 0:
                print(PIXEL_SPACE_NOTE, flush=True)
            return
        restore_weights(model.autoencoder, nnx.Param, self.config.vae_workdir)
        sample = self.data.batch(np.arange(LATENT_SCALE_IMAGES))["image"]
        latents, _ = model.autoencoder.encode(jnp.asarray(sample))  # the posterior means
        model.latent_scale.set_value(1.0 / jnp.std(latents))

    def save_description(self, workdir: Path) -> None:
        """Writes what the run's task is made from beside its checkpoints: the tokenizer and the
        frozen autoencoder's architecture (a latent model's)."""
        if jax.process_index() != 0:
            return
        with atomic_path(workdir / TOKENIZER_DIR, directory=True) as partial:
            save_tokenizer(self.tokenizer, partial)
        if self.autoencoder_config is not None:
            write_atomically(
                workdir / AUTOENCODER_FILE,
                json.dumps(self.autoencoder_config.to_dict(), indent=2, default=list),
            )

    def text_ids(self, captions: list[str]) -> np.ndarray:
        """Token ids `[N, T]` of captions."""
        return encode(self.tokenizer, captions)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        examples = self.data.batch(indices)
        return {"image": examples["image"], "ids": self.text_ids(examples["caption"])}

    def loss(self, model: TextToImageModel, batch: dict):
        rate = self.config.train.caption_dropout
        return caption_dropout_loss(self.diffusion, rate, self.unconditional_ids, model, batch)

    def prepare(self, model: TextToImageModel, workdir: Path) -> None:
        del model, workdir  # nothing to compute from the weights

    def pipeline(
        self, model: TextToImageModel, controlnet: ControlNet | None = None
    ) -> TextToImagePipeline:
        return TextToImagePipeline(
            model,
            self.tokenizer,
            self.diffusion,
            self.config.data.image_size,
            controlnet=controlnet,
        )

    def preview(self, model: TextToImageModel) -> tuple[np.ndarray, dict[str, Any]]:
        """One sample for each preview prompt, with the config's sampler settings."""
        return image_preview(self, model)


def caption_dropout_loss(
    diffusion: Diffusion,
    rate: float,
    unconditional: np.ndarray,
    model: TextToImageModel,
    batch: dict,
    network: Callable[..., jax.Array] | None = None,
    *conditioning: jax.Array,
) -> tuple[jax.Array, dict]:
    """The denoising loss `[B]` of (latent) images conditioned on their captions, each caption
    replaced by the empty prompt with probability ``rate`` so that the model also learns the
    unconditional denoiser (classifier-free guidance). The denoiser network is
    ``network(x, t, context, *conditioning)`` (default: the model's denoiser).

    ``batch`` holds images and token ids (``unconditional``: the empty prompt's ids `[1, T]`), or
    the frozen encoders' cached ``moments`` and ``context`` (``unconditional``: the empty
    prompt's context `[1, T, D]`; see ``jaxdiff.train.encoding_cache``).
    """
    latent_keys, drop_keys, noise_keys = split_keys(batch["key"], 3)  # [B] each
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, rate, (1,)))(drop_keys)  # [B, 1]
    if "moments" in batch:
        mean, logvar = jnp.split(batch["moments"], 2, axis=-1)  # [B, h, w, c] each
        x0 = model.sample_latents(mean, logvar, latent_keys)
        context = jnp.where(drop[:, :, None], jnp.asarray(unconditional), batch["context"])
    else:
        x0 = model.encode_images(batch["image"], latent_keys)  # [B, h, w, c]
        ids = jnp.where(drop, jnp.asarray(unconditional), batch["ids"])  # [B, T]
        context = model.encode_text(ids)  # [B, T, D]
    network = model.network if network is None else network
    return diffusion.loss(network, x0.astype(jnp.float32), noise_keys, context, *conditioning), {}


def _autoencoder_config(
    config: ml_collections.ConfigDict, workdir: Path | None
) -> ml_collections.ConfigDict | None:
    """The frozen autoencoder's architecture: saved in ``workdir`` or read from ``vae_workdir``."""
    if workdir is not None and (workdir / AUTOENCODER_FILE).is_file():
        return from_json((workdir / AUTOENCODER_FILE).read_text())
    if not config.vae_workdir:
        return None
    if checkpoint_step(config.vae_workdir) is None:
        raise UserError(
            f"vae_workdir {config.vae_workdir!r} holds no trained autoencoder; "
            "train one with 'jaxdiff train --config shapes_vae --workdir DIR'"
        )
    vae_config = from_dict(saved_config_dict(config.vae_workdir))
    task = vae_config.task
    if task != "vae":
        raise UserError(
            f"vae_workdir {config.vae_workdir!r} holds a {task!r} run, not an autoencoder"
        )
    return vae_config.model.vae
