"""Training a text-conditioned (latent) diffusion model with caption dropout for guidance.

The text encoder and the denoiser (``model.denoiser``: the UNet of ``model.unet``, or the MMDiT
transformer of ``model.mmdit``) are trained together from scratch. With the DiT of ``model.dit``
the model is class-conditional: it has no text encoder, its prompts are the data's class names
(``data.label_key``), and caption dropout drops the class label to the null class.

The autoencoder, when the config names one (``vae_workdir``: a trained jaxdiff run;
``pretrained_vae``: a diffusers ``AutoencoderKL`` folder or hub id, such as Stable Diffusion's),
is frozen and copied into this run's checkpoints, so the workdir is self-contained. Without one
the model works on pixels.
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
from jaxdiff.convert.components import abstract_model, read_component_config
from jaxdiff.convert.pipeline_components import load_component, resolve_model_dir
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.diffusion import Diffusion, make_process
from jaxdiff.errors import UserError, check_choice, require
from jaxdiff.models.class_names import CLASS_NAMES_FILE, ClassNames
from jaxdiff.models.clip_text import CLIPTextTransformer
from jaxdiff.models.controlnet import ControlNet
from jaxdiff.models.dit import DiT
from jaxdiff.models.mmdit import MMDiT
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.models.tokenizer import (
    build_tokenizer,
    load_word_tokenizer,
    prompt_ids,
    save_tokenizer,
)
from jaxdiff.models.unet import UNet
from jaxdiff.models.vae import AutoencoderKL
from jaxdiff.pipelines.text_to_image import TextToImagePipeline
from jaxdiff.train import encoding_cache
from jaxdiff.train.tasks import DTYPES, image_preview, split_keys, validate_sample
from jaxdiff.workdir import checkpoint_step, restore_weights, saved_config_dict

# model.denoiser: the network configured by model.unet / model.mmdit / model.dit
DENOISERS = ("unet", "mmdit", "dit")
# The transformers' arguments the task derives from the latents, the text encoder, the classes.
FROM_TASK = {
    "mmdit": (
        "sample_size",
        "in_channels",
        "out_channels",
        "joint_attention_dim",
        "caption_projection_dim",
        "pooled_projection_dim",
        "pos_embed_max_size",
    ),
    "dit": ("sample_size", "in_channels", "out_channels", "num_embeds_ada_norm"),
}
AUTOENCODER_FILE = "autoencoder.json"  # the frozen autoencoder's architecture, beside its weights
TOKENIZER_DIR = "tokenizer"
LATENT_SCALE_IMAGES = 1024  # images encoded to measure the latent standard deviation
PIXEL_SPACE_NOTE = (
    "training on pixels (vae_workdir is empty); to train in latent space, add "
    "--config.vae_workdir=DIR, the workdir of a trained autoencoder (e.g. of --config shapes_vae), "
    "or --config.pretrained_vae=DIR_OR_HUB_ID, a diffusers AutoencoderKL"
)


class TextToImageTask:
    """Denoising loss on (latent) images conditioned on their captions."""

    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("autoencoder")))

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        self.config = config
        self.data = make_dataset(config.data)
        # A config without the field trains a UNet (runs saved before the field existed resume).
        self.denoiser_name = config.model.get("denoiser", "unet")
        check_choice("model.denoiser", self.denoiser_name, DENOISERS)
        self.tokenizer = self._prompt_vocabulary(workdir)
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
        name = self.denoiser_name
        require(name in config.model, f"model.denoiser={name!r} needs the model.{name} group")
        if name in FROM_TASK:
            for key in sorted(set(config.model[name]) & set(FROM_TASK[name])):
                raise UserError(
                    f"model.{name}.{key} is set by the task from the data and the conditioning; "
                    f"accepted: options other than {', '.join(FROM_TASK[name])}"
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
        self.cache = None  # the frozen autoencoder's encodings, when train.cache_encodings
        if config.train.get("cache_encodings", False):
            require(
                self.denoiser_name == "dit" and self.autoencoder_config is not None,
                "train.cache_encodings stores what frozen encoders compute: accepted for a "
                "class-conditional model on latents (model.denoiser='dit' with an autoencoder), "
                "not for a model with a text encoder",
            )
            encoding_cache.check_cacheable(config)
        self.diffusion = Diffusion(
            process=make_process(config.diffusion.process, **config.diffusion.process_options),
            parameterization=config.diffusion.parameterization,
            weighting=config.diffusion.weighting,
            min_snr_gamma=config.diffusion.min_snr_gamma,
        )
        self.unconditional_ids = self.text_ids([""])  # [1, T]
        self.text_ids(list(config.sample.preview_prompts))  # unknown words fail now, not later

    def _prompt_vocabulary(self, workdir: Path | None) -> Any:
        """The word tokenizer of a text model, the class names of a class-conditional one: saved
        in ``workdir``, or made from the data."""
        if self.denoiser_name == "dit":
            if workdir is not None and (workdir / CLASS_NAMES_FILE).is_file():
                return ClassNames.load(workdir)
            require(
                self.data.source.class_names is not None,
                f"model.denoiser='dit' is class-conditional: its data needs class labels; "
                f"{self.data.source.name} has none (use a tfds data set with data.label_key)",
            )
            return ClassNames(self.data.source.class_names)
        if workdir is not None and (workdir / TOKENIZER_DIR).is_dir():
            return load_word_tokenizer(workdir / TOKENIZER_DIR)
        return build_tokenizer(
            self.data.vocabulary(),
            self.config.model.text.max_position_embeddings,
            self.data.word_groups(),
        )

    def build_model(self, rngs: nnx.Rngs) -> TextToImageModel:
        model = self.config.model
        dtype = DTYPES[model.dtype]
        text_encoder = None
        if self.denoiser_name != "dit":
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
        elif self.denoiser_name == "dit":
            size = self.latent_shape[0]
            transformer = DiT(
                sample_size=size, num_embeds_ada_norm=len(self.tokenizer), **model.dit, **common
            )
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
        """Saves the tokenizer; loads the frozen autoencoder and sets the latent scale: the
        pretrained one's `scaling_factor`, or one over the std of a trained run's latents."""
        self.save_description(workdir)
        if model.autoencoder is None:
            if jax.process_index() == 0:
                print(PIXEL_SPACE_NOTE, flush=True)
            return
        if self.config.get("pretrained_vae", ""):
            nnx.update(model.autoencoder, nnx.state(load_component(self.config.pretrained_vae)))
            model.latent_scale.set_value(jnp.float32(model.autoencoder.scaling_factor))
            return
        restore_weights(model.autoencoder, nnx.Param, self.config.vae_workdir)
        sample = self.data.batch(np.arange(LATENT_SCALE_IMAGES))["image"]
        latents, _ = model.autoencoder.encode(jnp.asarray(sample))  # the posterior means
        model.latent_scale.set_value(1.0 / jnp.std(latents))

    def save_description(self, workdir: Path) -> None:
        """Writes what the run's task is made from beside its checkpoints: the tokenizer (the
        class names of a class-conditional model) and the frozen autoencoder's architecture (a
        latent model's)."""
        if jax.process_index() != 0:
            return
        if isinstance(self.tokenizer, ClassNames):
            self.tokenizer.save(workdir)
        else:
            with atomic_path(workdir / TOKENIZER_DIR, directory=True) as partial:
                save_tokenizer(self.tokenizer, partial)
        if self.autoencoder_config is not None:
            write_atomically(
                workdir / AUTOENCODER_FILE,
                json.dumps(self.autoencoder_config.to_dict(), indent=2, default=list),
            )

    def text_ids(self, captions: list[str]) -> np.ndarray:
        """Token ids `[N, T]` of captions (class labels `[N, 1]` of a class-conditional
        model)."""
        return prompt_ids(self.tokenizer, captions)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        if self.cache is not None:
            return self.cache.batch(self.data, indices)
        examples = self.data.batch(indices)
        return {"image": examples["image"], "ids": self.text_ids(examples["caption"])}

    def loss(self, model: TextToImageModel, batch: dict):
        rate = self.config.train.caption_dropout
        return caption_dropout_loss(self.diffusion, rate, self.unconditional_ids, model, batch)

    def prepare(self, model: TextToImageModel, workdir: Path) -> None:
        """Reads (or first computes) the cached encodings of the data, when configured."""
        if self.config.train.get("cache_encodings", False):
            self.cache = encoding_cache.prepare(
                model, self.config, self.data, self.text_ids, workdir
            )

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
    prompt's context `[1, T, D]`, a class model's null label `[1, 1]`; see
    ``jaxdiff.train.encoding_cache``).
    """
    latent_keys, drop_keys, noise_keys = split_keys(batch["key"], 3)  # [B] each
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, rate, (1,)))(drop_keys)[:, 0]  # [B]

    def dropped(given: jax.Array) -> jax.Array:  # [B, ...]: a row with `unconditional`'s
        return jnp.where(drop.reshape((-1,) + (1,) * (given.ndim - 1)), unconditional, given)

    if "moments" in batch:
        mean, logvar = jnp.split(batch["moments"], 2, axis=-1)  # [B, h, w, c] each
        x0 = model.sample_latents(mean, logvar, latent_keys)
        context = dropped(batch["context"])  # [B, T, D]
        if model.class_conditional:  # its cached "context" is the labels [B, 1]
            context = model.encode_text(context)
    else:
        x0 = model.encode_images(batch["image"], latent_keys)  # [B, h, w, c]
        context = model.encode_text(dropped(batch["ids"]))  # [B, T, D]
    network = model.network if network is None else network
    return diffusion.loss(network, x0.astype(jnp.float32), noise_keys, context, *conditioning), {}


def _autoencoder_config(
    config: ml_collections.ConfigDict, workdir: Path | None
) -> ml_collections.ConfigDict | None:
    """The frozen autoencoder's architecture: saved in ``workdir``, or read from ``vae_workdir``
    or ``pretrained_vae``."""
    if workdir is not None and (workdir / AUTOENCODER_FILE).is_file():
        return from_json((workdir / AUTOENCODER_FILE).read_text())
    pretrained = config.get("pretrained_vae", "")  # absent from configs saved before it
    if pretrained:
        require(
            not config.vae_workdir,
            f"vae_workdir {config.vae_workdir!r} and pretrained_vae {pretrained!r} both name the "
            "autoencoder; give one of them",
        )
        source = resolve_model_dir(pretrained, patterns=["config.json"])
        vae = abstract_model(read_component_config(source), pretrained)
        if not isinstance(vae, AutoencoderKL):
            raise UserError(
                f"pretrained_vae {pretrained!r} holds a {type(vae).__name__}; accepted: an "
                "AutoencoderKL folder or hub id (e.g. stabilityai/sd-vae-ft-ema)"
            )
        return from_dict(dict(vae.architecture))
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
