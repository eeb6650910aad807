"""Fine-tuning a pretrained Stable Diffusion UNet on image-caption data.

The model folder (diffusers format, or a hub id) gives the three networks, the tokenizer and the
scheduler config: the training objective is the scheduler's own (its discrete VP process and
prediction type, timesteps drawn uniformly, as diffusers' ``train_text_to_image.py``), with an
optional Min-SNR-gamma weighting (Hang et al. 2023). The VAE and the text encoder are frozen; the
VAE's ``scaling_factor`` scales the latents. A fresh run copies the architecture files, tokenizer
and scheduler config into the workdir, so that sampling and resuming need only the workdir.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff.atomic_write import atomic_path
from jaxdiff.convert.components import abstract_model, read_component_config
from jaxdiff.convert.json_files import read_json_object
from jaxdiff.convert.pipeline_components import NETWORKS, resolve_model_dir
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import require
from jaxdiff.models import lora
from jaxdiff.models.controlnet import ControlNet
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.pipelines import StableDiffusion
from jaxdiff.pipelines.prompts import tokenize
from jaxdiff.pipelines.scheduler_config import SchedulerConfig
from jaxdiff.train import encoding_cache
from jaxdiff.train.tasks import DTYPES, image_preview
from jaxdiff.train.text_to_image_task import caption_dropout_loss
from jaxdiff.workdir import checkpoint_step

PRETRAINED_DIR = "pretrained"  # architecture files, tokenizer and scheduler, copied from the model
FINETUNE_WEIGHTINGS = ("uniform", "min_snr")


class FinetuneTask:
    """Denoising loss of a pretrained latent text-to-image model on new captioned images."""

    trainable = nnx.All(nnx.Param, nnx.PathContains("unet"))
    pixel_space = False  # a latent model

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        from transformers import AutoTokenizer

        self.config = config
        # A run's own copy of the model's description, once it has a checkpoint (its weights).
        saved = workdir / PRETRAINED_DIR if workdir is not None else None
        trained = saved is not None and checkpoint_step(workdir) is not None
        self.source = saved if trained and saved.is_dir() else None
        if self.source is None:
            require(
                bool(config.pretrained),
                "pretrained is empty; give a diffusers model folder or hub id, e.g. "
                "--config.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5",
            )
            self.source = resolve_model_dir(config.pretrained, config.variant or None)
        require(
            not (self.source / "text_encoder_2").is_dir(),
            f"pretrained {config.pretrained!r} is an SDXL model; fine-tuning it is not supported "
            "yet (accepted: Stable Diffusion 1.x / 2.x)",
        )
        self.configs = {name: read_component_config(self.source / name) for name in NETWORKS}
        scheduler = read_json_object(self.source / "scheduler" / "scheduler_config.json")
        self.scheduler_config = scheduler
        schedule = SchedulerConfig.from_dict(scheduler)
        weighting = config.diffusion.weighting
        require(
            weighting in FINETUNE_WEIGHTINGS,
            f"diffusion.weighting {weighting!r} is not supported for fine-tuning; accepted: "
            f"{', '.join(FINETUNE_WEIGHTINGS)}",
        )
        self.diffusion = Diffusion(
            schedule.process,
            schedule.parameterization,
            weighting=weighting,
            min_snr_gamma=config.diffusion.min_snr_gamma,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(self.source / "tokenizer")
        require(
            0.0 <= config.train.caption_dropout < 1.0,
            f"train.caption_dropout must be in [0, 1), got {config.train.caption_dropout}",
        )
        self.unconditional_ids = self.text_ids([""])  # [1, T]
        self.data = make_dataset(config.data)
        self.cache = None  # the frozen encoders' outputs, when train.cache_encodings
        if config.train.cache_encodings:
            encoding_cache.check_cacheable(config)
        vae = self.configs["vae"]
        factor = 2 ** (len(vae.get("block_out_channels", (64,))) - 1)
        self.vae_scale_factor = factor  # image pixels per latent pixel
        size = config.data.image_size
        require(
            size % factor == 0,
            f"data.image_size {size} is not divisible by the VAE's downsampling factor {factor}",
        )

    def build_model(self, rngs: nnx.Rngs) -> TextToImageModel:
        """The networks with zero weights: every one is replaced by the pretrained weights
        (`initialize`) or a checkpoint's, so none is drawn at random."""
        dtype = DTYPES[self.config.model.dtype]
        networks = {
            name: zero_module(abstract_model(self.configs[name], str(self.source / name), dtype))
            for name in NETWORKS
        }
        networks["unet"].remat = self.config.train.remat  # its blocks read it when called
        return TextToImageModel(
            networks["text_encoder"],
            networks["unet"],
            networks["vae"],
            latent_scale=networks["vae"].scaling_factor,
        )

    def initialize(self, model: TextToImageModel, workdir: Path) -> None:
        """Loads the pretrained weights and copies the model's description into the workdir."""
        from jaxdiff.convert.pipeline_components import load_network

        for name, module in (
            ("unet", model.unet),
            ("vae", model.autoencoder),
            ("text_encoder", model.text_encoder),
        ):
            loaded = load_network(self.source / name, variant=self.config.variant or None)
            lora.copy_adapters(module, loaded)  # a LoRA task's fresh adapters stay as they are
            nnx.update(module, nnx.state(loaded))
        target = workdir / PRETRAINED_DIR
        if jax.process_index() == 0 and self.source != target:
            # A copy left by a run that died before its first save is replaced.
            with atomic_path(target, directory=True) as partial:
                for name in NETWORKS:
                    (partial / name).mkdir()
                    shutil.copy2(self.source / name / "config.json", partial / name / "config.json")
                shutil.copytree(self.source / "tokenizer", partial / "tokenizer")
                shutil.copytree(self.source / "scheduler", partial / "scheduler")

    def text_ids(self, captions: list[str]) -> np.ndarray:
        """Token ids `[N, T]` of captions, cut at the tokenizer's limit (silently: training
        captions are often longer than CLIP's 77 tokens)."""
        return tokenize(self.tokenizer, captions, warn=False)

    def prepare(self, model: TextToImageModel, workdir: Path) -> None:
        """Reads (or first computes) the cached encodings of the data, when configured."""
        if self.config.train.cache_encodings:
            self.cache = encoding_cache.prepare(
                model, self.config, self.data, self.text_ids, workdir
            )

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        if self.cache is not None:
            return self.cache.batch(self.data, indices)
        examples = self.data.batch(indices)
        return {"image": examples["image"], "ids": self.text_ids(examples["caption"])}

    def loss(self, model: TextToImageModel, batch: dict) -> tuple[jax.Array, dict]:
        rate = self.config.train.caption_dropout
        cached = self.cache is not None
        unconditional = self.cache.unconditional if cached else self.unconditional_ids
        return caption_dropout_loss(self.diffusion, rate, unconditional, model, batch)

    def pipeline(
        self, model: TextToImageModel, controlnet: ControlNet | None = None
    ) -> StableDiffusion:
        return StableDiffusion(
            model.unet,
            model.autoencoder,
            model.text_encoder,
            self.tokenizer,
            self.scheduler_config,
            controlnet=controlnet,
        )

    def preview(self, model: TextToImageModel) -> tuple[np.ndarray, dict[str, Any]]:
        """One sample for each preview prompt, with the config's sampler settings."""
        return image_preview(self, model)


def zero_module(abstract: nnx.Module) -> nnx.Module:
    """A module built abstractly (`nnx.eval_shape`) with every variable set to zeros on the host."""
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state))
