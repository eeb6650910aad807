"""Training a ControlNet (Zhang et al. 2023) for a frozen text-to-image model.

The ControlNet starts as a copy of the UNet's encoder with zero convolutions (or from
``controlnet.pretrained``, a diffusers `ControlNetModel` folder or hub id) and is all that
trains, as diffusers' ``train_controlnet.py`` trains one. The frozen model is a pretrained
Stable Diffusion (``pretrained``, everything else `FinetuneTask`'s: the scheduler's objective,
caption dropout) or a trained jaxdiff text-to-image run (``base_workdir``, `TrainedBaseTask`'s:
the run's noise process and tokenizer). The data give a conditioning image beside each image and
caption (``data.conditioning_column`` of a folder, ``data.conditioning_key`` of a tfds set,
``data.conditioning`` of the shapes).

When the run reaches its last step, its ControlNet (EMA weights) is written as a diffusers
`ControlNetModel` folder, ``WORKDIR/controlnet``: for a Stable Diffusion base, ``jaxdiff sample
--pretrained MODEL --controlnet`` and diffusers' ``ControlNetModel.from_pretrained`` load it; a
run on either base samples with ``jaxdiff sample --workdir RUN --control-image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import images
from jaxdiff.atomic_write import atomic_path
from jaxdiff.convert.components import write_component
from jaxdiff.convert.pipeline_components import load_component
from jaxdiff.errors import UserError, require
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.controlnet import (
    CHANNEL_ORDERS,
    ControlNet,
    ControlNetConditioningEmbedding,
    arguments_for,
    check_steers,
)
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.pipelines.base import Pipeline
from jaxdiff.pipelines.sample_png import sample_text
from jaxdiff.train.finetune_task import FinetuneTask, zero_module
from jaxdiff.train.text_to_image_task import caption_dropout_loss
from jaxdiff.train.trained_base import TrainedBaseTask

EXPORT_DIR = "controlnet"  # WORKDIR/controlnet: the trained ControlNet in diffusers' format


class ControlledModel(TextToImageModel):
    """A text-to-image model and the ControlNet that steers its UNet."""

    def __init__(
        self,
        text_encoder: nnx.Module,
        unet: nnx.Module,
        autoencoder: nnx.Module,
        latent_scale: float,
        controlnet: ControlNet,
    ):
        super().__init__(text_encoder, unet, autoencoder, latent_scale)
        self.controlnet = controlnet

    def steered(self, x: jax.Array, t: jax.Array, context: jax.Array, cond: jax.Array) -> jax.Array:
        """The UNet's output with the ControlNet's residuals for the conditioning images
        `cond` [B, H, W, C] in [0, 1]."""
        return self.unet(x, t, context, *self.controlnet(x, t, context, cond))


class ControlNetTraining:
    """What a ControlNet task adds to the task of its frozen model (`FinetuneTask` or
    `TrainedBaseTask`, the next class in the method order)."""

    trainable = nnx.All(nnx.Param, nnx.PathContains("controlnet"))

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        super().__init__(config, workdir)
        settings = config.controlnet
        order = settings.channel_order
        require(
            order in CHANNEL_ORDERS,
            f"controlnet.channel_order={order!r}; accepted: {', '.join(CHANNEL_ORDERS)}",
        )
        stages = tuple(settings.conditioning_embedding_out_channels)
        require(
            len(stages) > 0 and all(isinstance(c, int) and c > 0 for c in stages),
            f"controlnet.conditioning_embedding_out_channels={stages!r}; accepted: positive "
            "channel counts, one per stage",
        )
        factor = 2 ** (len(stages) - 1)
        vae_factor = self.vae_scale_factor
        accepted = (
            "1 stage (a pixel-space model)"
            if vae_factor == 1
            else f"{len(f'{vae_factor:b}')} stages (the VAE's factor {vae_factor})"
        )
        require(
            factor == vae_factor,
            f"controlnet.conditioning_embedding_out_channels has {len(stages)} stages: the "
            f"conditioning images at {factor}x the latents' size; accepted: {accepted}",
        )
        require(
            not config.train.get("cache_encodings", False),
            "train.cache_encodings keeps no conditioning images; accepted: "
            "train.cache_encodings=False",
        )
        require(
            not config.eval.metrics,
            f"eval.metrics={config.eval.metrics!r}: a ControlNet's samples need control images; "
            "accepted: no metrics",
        )
        first = self.data.batch(np.arange(1))
        require(
            "conditioning_image" in first,
            f"{self.data.source.name} gives no conditioning images; accepted: data with one per "
            "example (data.conditioning_column of a folder, data.conditioning_key of a tfds set,"
            " data.conditioning of the shapes)",
        )

    def build_model(self, rngs: nnx.Rngs) -> ControlledModel:
        """The frozen networks (the base task's) and a ControlNet for their UNet: its
        conditioning embedding drawn from `rngs`, its zero convolutions at zero and the rest
        zeros too, set in `initialize` (or read from a checkpoint)."""
        model = super().build_model(rngs)
        settings = self.config.controlnet
        arguments = arguments_for(
            model.unet,
            conditioning_channels=3,
            conditioning_embedding_out_channels=tuple(settings.conditioning_embedding_out_channels),
            controlnet_conditioning_channel_order=settings.channel_order,
        )
        dtype = model.unet.dtype
        controlnet = zero_module(
            eval_shape(
                lambda: ControlNet(
                    **arguments, remat=model.unet.remat, dtype=dtype, rngs=nnx.Rngs(0)
                )
            )
        )
        embedding = ControlNetConditioningEmbedding(
            arguments["conditioning_channels"],
            arguments["conditioning_embedding_out_channels"],
            arguments["block_out_channels"][0],
            dtype=dtype,
            param_dtype=model.unet.conv_in.kernel.dtype,
            rngs=rngs,
        )
        nnx.update(controlnet.controlnet_cond_embedding, nnx.state(embedding))
        return ControlledModel(
            model.text_encoder,
            model.unet,
            model.autoencoder,
            model.latent_scale[...],
            controlnet,
        )

    def initialize(self, model: ControlledModel, workdir: Path) -> None:
        """The pretrained networks, and the ControlNet copied from their UNet (or read from
        ``controlnet.pretrained``)."""
        super().initialize(model, workdir)
        source = self.config.controlnet.pretrained
        if not source:
            model.controlnet.copy_encoder(model.unet)
            return
        loaded = load_component(source, param_dtype=model.controlnet.conv_in.kernel.dtype)
        if not isinstance(loaded, ControlNet):
            raise UserError(
                f"controlnet.pretrained {source!r} holds a {type(loaded).__name__}; accepted: a "
                "diffusers ControlNetModel folder"
            )
        check_steers(loaded, model.unet, f"controlnet.pretrained {source!r}")
        theirs, mine = dict(loaded.architecture), dict(model.controlnet.architecture)
        for key, value in mine.items():
            require(
                theirs[key] == value,
                f"controlnet.pretrained {source!r} has {key}={theirs[key]!r}, the config's "
                f"ControlNet {value!r}; accepted: the same (the controlnet group)",
            )
        nnx.update(model.controlnet, nnx.state(loaded, nnx.Param))

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        examples = self.data.batch(indices)
        return {
            "image": examples["image"],  # [N, S, S, 3] in [-1, 1]
            "ids": self.text_ids(examples["caption"]),
            "conditioning_image": examples["conditioning_image"],  # [N, S, S, 3] in [0, 1]
        }

    def loss(self, model: ControlledModel, batch: dict) -> tuple[jax.Array, dict]:
        rate = self.config.train.caption_dropout
        return caption_dropout_loss(
            self.diffusion,
            rate,
            self.unconditional_ids,
            model,
            batch,
            model.steered,
            batch["conditioning_image"],
        )

    def pipeline(self, model: ControlledModel) -> Pipeline:
        return super().pipeline(model, controlnet=model.controlnet)

    def preview(self, model: ControlledModel) -> tuple[np.ndarray, dict[str, Any]]:
        """The first preview examples of the data: their conditioning images above samples for
        their captions, with the config's sampler settings."""
        sample = self.config.sample
        count = len(sample.preview_prompts)
        examples = self.data.unaugmented().batch(np.arange(count))
        control = examples["conditioning_image"]  # [N, S, S, 3] in [0, 1]
        pictures = self.pipeline(model)(
            examples["caption"],
            control_image=control,
            num_inference_steps=sample.steps,
            guidance_scale=sample.guidance,
            sampler=sample.sampler,
        )
        rows = images.to_uint8(np.concatenate([control, pictures]), (0.0, 1.0))
        text = sample_text(examples["caption"], 0, sample.sampler, sample.steps, sample.guidance)
        return images.grid(rows, columns=count), text

    def export(self, model: ControlledModel, workdir: Path) -> None:
        """Writes the ControlNet as a diffusers folder, `WORKDIR/controlnet`, replacing one a
        rerun of the finished run left."""
        if jax.process_index() != 0:
            return
        with atomic_path(workdir / EXPORT_DIR, directory=True) as partial:
            write_component(model.controlnet, partial)


class ControlNetTask(ControlNetTraining, FinetuneTask):
    """A ControlNet for a pretrained Stable Diffusion model (``pretrained``)."""


class RunControlNetTask(ControlNetTraining, TrainedBaseTask):
    """A ControlNet for a trained jaxdiff text-to-image run (``base_workdir``)."""
