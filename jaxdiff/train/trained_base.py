"""A trained jaxdiff text-to-image run (``base_workdir``) as the frozen base of a task that adapts
it (a ControlNet, LoRA adapters).

The config repeats the base run's architecture (``model.text``, ``model.unet``) and noise process
(``diffusion.process``, its options and the parameterization), checked against the run's own (the
loss weighting may differ); the tokenizer, the autoencoder's architecture, the
latent scale and the weights (the run's EMA weights) come from the run. A fresh run saves the
tokenizer and the autoencoder's architecture beside its checkpoints, which hold every weight, so
that resuming and sampling need only its own workdir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from jaxdiff.configuration import from_dict
from jaxdiff.errors import require
from jaxdiff.models import lora
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.text_to_image import TextToImageModel
from jaxdiff.train.finetune_task import zero_module
from jaxdiff.train.text_to_image_task import TOKENIZER_DIR, TextToImageTask
from jaxdiff.workdir import checkpoint_step, require_trained, restore_weights, saved_config_dict

SHARED_FIELDS = (
    "model.text",
    "model.unet",
    "diffusion.process",
    "diffusion.process_options",
    "diffusion.parameterization",
)
"""The config fields an adapting run shares with its base run."""


class TrainedBaseTask(TextToImageTask):
    """`TextToImageTask` whose networks are the frozen, trained ones of ``config.base_workdir``."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path | None = None):
        own = workdir is not None and checkpoint_step(workdir) is not None
        if own and (workdir / TOKENIZER_DIR).is_dir():
            super().__init__(config, workdir)
            return
        base = config.base_workdir
        require(
            bool(base),
            "base_workdir is empty; accepted: the workdir of a trained text-to-image run, e.g. "
            "--config.base_workdir=runs/demo/t2i",
        )
        require_trained(base, "base_workdir")
        base_config = from_dict(saved_config_dict(base))
        denoiser = base_config.model.get("denoiser", "unet")
        require(
            denoiser == "unet",
            f"base_workdir {base!r} trained model.denoiser={denoiser!r}; LoRA and ControlNet "
            "runs adapt a UNet base",
        )
        check_base(config, base_config)
        super().__init__(config, Path(base))

    def build_model(self, rngs: nnx.Rngs) -> TextToImageModel:
        """The base run's networks with zero weights (none drawn from ``rngs``): `initialize`
        or a checkpoint sets them."""
        del rngs
        return zero_module(eval_shape(lambda: TextToImageTask.build_model(self, nnx.Rngs(0))))

    def initialize(self, model: TextToImageModel, workdir: Path) -> None:
        """Saves the base run's description and sets the networks and the latent scale to its
        newest EMA weights (adapters added by a subclass stay as they are)."""
        self.save_description(workdir)
        base = TrainedBaseTask.build_model(self, nnx.Rngs(0))
        restore_weights(base, TextToImageTask.trainable, self.config.base_workdir)
        for name in ("text_encoder", "unet", "autoencoder"):
            ours, theirs = getattr(model, name), getattr(base, name)
            if theirs is not None:
                lora.copy_adapters(ours, theirs)
                nnx.update(ours, nnx.state(theirs))
        model.latent_scale.set_value(base.latent_scale[...])


def check_base(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, a base run that is not text-to-image, or whose architecture or
    noise process differs from ``config``'s (`SHARED_FIELDS`), or a config that names its own
    autoencoder."""
    where = f"base_workdir {config.base_workdir!r}"
    require(
        base.task == "text_to_image",
        f"{where} holds a {base.task!r} run; accepted: a text_to_image run",
    )
    for field in ("vae_workdir", "pretrained_vae"):
        value = config.get(field, "")
        require(not value, f"{field}={value!r}: the base run's autoencoder is used; accepted: ''")
    for field in SHARED_FIELDS:
        ours, theirs = _plain(config, field), _plain(base, field)
        if not isinstance(ours, dict) or not isinstance(theirs, dict):
            ours, theirs = {"": ours}, {"": theirs}
        for key in sorted(set(ours) | set(theirs)):
            name = f"{field}.{key}" if key else field
            require(
                ours.get(key) == theirs.get(key),
                f"{name}={ours.get(key)!r} but {where} was trained with {theirs.get(key)!r}; "
                "accepted: the base run's value",
            )


def _plain(config: ml_collections.ConfigDict, field: str) -> Any:
    """A config field as JSON values (groups as dicts, tuples as lists), as a saved config
    holds it."""
    node = config
    for part in field.split("."):
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        node = node.to_dict()
    return json.loads(json.dumps(node, default=list))
