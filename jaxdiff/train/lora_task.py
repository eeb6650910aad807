"""Training LoRA adapters (Hu et al. 2021) on a frozen text-to-image model.

The frozen model is a pretrained Stable Diffusion (``pretrained``, everything else
`FinetuneTask`'s: the data, the scheduler's objective, cached encodings) or a trained jaxdiff
text-to-image run (``base_workdir``, `TrainedBaseTask`'s). Adapters of rank ``lora.rank`` and
scale ``lora.alpha / lora.rank`` go on the layers whose reference module path (diffusers' UNet,
transformers' CLIP) matches ``lora.unet_targets`` / ``lora.text_encoder_targets`` as peft's
``target_modules`` match (the whole path, or its end after a "."), their inputs dropped at
``lora.dropout`` in training (each example's masks from its own key). The base weights stay
frozen: the optimizer state and the EMA hold the adapters alone, the checkpoints the base
weights once.

When the run reaches its last step, its adapters (EMA weights) are written to
``WORKDIR/pytorch_lora_weights.safetensors`` in ``lora.save_format``: "peft" (diffusers'
``load_lora_weights`` reads it) or "kohya" (A1111, ComfyUI); a jaxdiff base run's pipeline loads
either (``task.pipeline(model).load_lora_weights``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
from flax import nnx

from jaxdiff.convert.components import model_format
from jaxdiff.convert.lora_files import WEIGHT_NAME
from jaxdiff.convert.lora_save import SAVE_FORMATS, save_lora
from jaxdiff.errors import check_choice, require
from jaxdiff.models import lora
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.train.finetune_task import FinetuneTask
from jaxdiff.train.trained_base import TrainedBaseTask

ADAPTER = "default"  # the adapter's name in the model, as peft names a single adapter
DROPOUT_STREAM = 0x10BA  # folded into an example's key for its adapters' dropout masks


class LoRATraining:
    """What a LoRA task adds to the task of its frozen model (`FinetuneTask` or
    `TrainedBaseTask`, the next class in the method order)."""

    trainable = nnx.LoRAParam

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        super().__init__(config, workdir)
        settings = config.lora
        rank, alpha = settings.rank, settings.alpha
        require(
            isinstance(rank, int) and rank >= 1, f"lora.rank={rank!r}; accepted: an integer >= 1"
        )
        require(alpha > 0, f"lora.alpha={alpha!r}; accepted: a number > 0")
        dropout = settings.dropout
        require(0 <= dropout < 1, f"lora.dropout={dropout!r}; accepted: a number in [0, 1)")
        check_choice("lora.save_format", settings.save_format, SAVE_FORMATS)
        for group in ("unet_targets", "text_encoder_targets"):
            patterns = settings[group]
            require(
                all(isinstance(p, str) and p for p in patterns),
                f"lora.{group}={tuple(patterns)!r}; accepted: module names such as 'to_q'",
            )
        require(
            len(settings.unet_targets) + len(settings.text_encoder_targets) > 0,
            "lora.unet_targets and lora.text_encoder_targets are both empty; accepted: module "
            "names to adapt, e.g. --config.lora.unet_targets=to_q,to_k,to_v,to_out.0",
        )
        require(
            not (settings.text_encoder_targets and config.train.get("cache_encodings", False)),
            "train.cache_encodings keeps the text encoder's outputs, which its LoRA changes; "
            "accepted: lora.text_encoder_targets=() or train.cache_encodings=False",
        )

    def build_model(self, rngs: nnx.Rngs) -> TextToImageModel:
        """The frozen networks with fresh adapters on the targeted layers."""
        model = super().build_model(rngs)
        settings = self.config.lora
        rank, alpha = settings.rank, settings.alpha
        for group, network in (
            ("unet_targets", model.unet),
            ("text_encoder_targets", model.text_encoder),
        ):
            patterns = tuple(settings[group])
            require(
                not patterns
                or add_adapters(network, patterns, rank, alpha, rngs, settings.dropout) > 0,
                f"lora.{group}={patterns!r} matches no Linear or Conv layer; accepted: module "
                "names such as 'to_q', 'to_out.0', 'ff.net.2', 'conv1' (the UNet) or 'q_proj' "
                "(the text encoder)",
            )
        return model

    def loss(self, model: TextToImageModel, batch: dict) -> tuple[jax.Array, dict]:
        """The base task's loss, the adapters' inputs dropped at ``lora.dropout`` with masks
        from each example's key."""
        keys = jax.vmap(lambda key: jax.random.fold_in(key, DROPOUT_STREAM))(batch["key"])
        with lora.dropout_keys(keys):
            return super().loss(model, batch)

    def export(self, model: TextToImageModel, workdir: Path) -> None:
        """Writes the adapters to ``WORKDIR/pytorch_lora_weights.safetensors``."""
        if jax.process_index() != 0:
            return
        networks = {"unet": model.unet, "text_encoder": model.text_encoder}
        save_lora(workdir / WEIGHT_NAME, networks, ADAPTER, self.config.lora.save_format)


class LoRATask(LoRATraining, FinetuneTask):
    """LoRA adapters on a pretrained Stable Diffusion model (``pretrained``)."""


class RunLoRATask(LoRATraining, TrainedBaseTask):
    """LoRA adapters on a trained jaxdiff text-to-image run (``base_workdir``)."""


def add_adapters(
    network: nnx.Module,
    patterns: tuple[str, ...],
    rank: int,
    alpha: float,
    rngs: nnx.Rngs,
    dropout: float = 0.0,
) -> int:
    """Adds a fresh adapter `ADAPTER` of `rank`, scale `alpha / rank` and `dropout` to every
    Linear / Conv layer of `network` whose reference module path matches one of `patterns`
    (peft's `target_modules` rule); returns how many."""
    table = model_format(network).table(dict(network.architecture))
    matched = 0
    for path, layer in lora.layer_paths(network).items():
        module, _ = table.layer_module(path)
        if any(module == p or module.endswith(f".{p}") for p in patterns):
            down, up, scale = lora.new_adapter(layer, rank, alpha / rank, rngs.params())
            lora.add_adapter(network, path, ADAPTER, down, up, scale, dropout)
            matched += 1
    return matched
