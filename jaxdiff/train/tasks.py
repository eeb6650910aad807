"""What a training job supplies to the trainer, and the registry of jobs by config name."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff.configuration import require
from jaxdiff.errors import UserError
from jaxdiff.train.optim import LR_SCHEDULES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NONFINITE_POLICIES = ("stop", "skip")  # stop the run, or skip the update and count it


class Task(Protocol):
    """A trainable job: its model, its data stream, its loss and a picture of its progress."""

    trainable: nnx.filterlib.Filter  # the parameters the optimizer and the EMA update

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def initialize(self, model: nnx.Module, workdir: Path) -> None:
        """Set-up of a fresh run (pretrained parts, files saved beside the checkpoints)."""

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at ``indices`` (positions in the data stream): a function of the indices
        alone, so a resumed run reads exactly what the uninterrupted one would have."""

    def loss(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Per-example losses [B] and metrics {name: [B]}; ``batch["key"]`` holds one PRNG key
        per example, the only source of randomness."""

    def preview(self, model: nnx.Module) -> tuple[np.ndarray, dict[str, str]]:
        """A uint8 image grid showing the model's progress and the PNG text that describes it."""


def make_task(config: ml_collections.ConfigDict, workdir: str | Path | None = None) -> Task:
    """The task named by ``config.task``, with the config validated."""
    from jaxdiff.train.finetune_task import FinetuneTask
    from jaxdiff.train.text_to_image_task import TextToImageTask
    from jaxdiff.train.vae_task import VAETask

    tasks = {"vae": VAETask, "text_to_image": TextToImageTask, "finetune": FinetuneTask}
    if config.task not in tasks:
        raise UserError(f"unknown task {config.task!r}; accepted: {', '.join(sorted(tasks))}")
    validate_common(config)
    task = tasks[config.task](config, None if workdir is None else Path(workdir))
    if config.eval.metrics.strip() and not hasattr(task, "generator"):
        raise UserError(f"eval.metrics: a {config.task!r} model does not generate images")
    return task


def validate_common(config: ml_collections.ConfigDict) -> None:
    """Checks the fields every task shares; each message names the value and what is accepted."""
    from jaxdiff.evaluation.evaluate import validate_eval_config

    validate_eval_config(config.eval, config.data)
    train = config.train
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        require(train[name] > 0, f"train.{name} must be > 0, got {train[name]}")
    require(train.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {train.warmup_steps}")
    require(
        train.preview_every >= 0, f"train.preview_every must be >= 0, got {train.preview_every}"
    )
    require(train.learning_rate > 0, f"train.learning_rate must be > 0, got {train.learning_rate}")
    require(train.grad_clip > 0, f"train.grad_clip must be > 0, got {train.grad_clip}")
    require(0.0 <= train.ema_rate < 1.0, f"train.ema_rate must be in [0, 1), got {train.ema_rate}")
    require(
        0.0 <= train.final_lr_fraction <= 1.0,
        f"train.final_lr_fraction must be in [0, 1], got {train.final_lr_fraction}",
    )
    for name in ("ema_half_life_images", "ema_rampup"):
        require(train[name] >= 0, f"train.{name} must be >= 0, got {train[name]}")
    require(train.micro_batches > 0, f"train.micro_batches must be > 0, got {train.micro_batches}")
    require(
        train.on_nonfinite in NONFINITE_POLICIES,
        f"train.on_nonfinite {train.on_nonfinite!r} is not supported; "
        f"accepted: {', '.join(NONFINITE_POLICIES)}",
    )
    require(
        train.lr_schedule in LR_SCHEDULES,
        f"train.lr_schedule {train.lr_schedule!r} is not supported; "
        f"accepted: {', '.join(LR_SCHEDULES)}",
    )
    require(
        config.model.dtype in DTYPES,
        f"model.dtype {config.model.dtype!r} is not supported; accepted: {', '.join(DTYPES)}",
    )


def split_keys(keys: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """Per-example keys [B] into ``n`` independent per-example key arrays, [B] each."""
    return tuple(jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, n))(keys), 1, 0))
