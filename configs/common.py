"""Pieces shared by the configs: the data set, the training loop, the optimizer."""

from __future__ import annotations

import ml_collections

from jaxdiff import parallel
from jaxdiff.errors import UserError

# Combinations never shown in training: each shape, colour and position still appears in others.
SHAPES_HOLDOUT = (
    "green triangle top right; blue circle center; red square bottom left; "
    "yellow circle bottom right; magenta triangle top left; cyan square center"
)


def shapes_data(image_size: int = 32, holdout: str = SHAPES_HOLDOUT) -> ml_collections.ConfigDict:
    """The embedded captioned ``shapes`` data set."""
    return ml_collections.ConfigDict(
        {
            "name": "shapes",
            "image_size": image_size,
            "seed": 0,
            "background": "textured",
            "holdout": holdout,
        }
    )


def train(steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
    """AdamW with warmup and cosine decay, clipping, EMA, checkpoints, logs and previews."""
    return ml_collections.ConfigDict(
        {
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "warmup_steps": max(1, steps // 20),
            "final_lr_fraction": 0.05,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "adam_b1": 0.9,
            "adam_b2": 0.99,
            "adam_eps": 1e-8,
            "lr_schedule": "cosine",
            "micro_batches": 1,  # gradient accumulation: micro-batches per step
            "remat": False,  # recompute each UNet block's activations in the backward pass
            "on_nonfinite": "stop",  # or "skip": skip the update and count it
            "ema_rate": 0.999,
            "ema_warmup": True,
            "ema_half_life_images": 0.0,  # > 0: EMA by half-life in images instead of ema_rate
            "ema_rampup": 0.0,
            "log_every": max(1, min(50, steps // 10)),
            "checkpoint_every": max(1, steps // 4),
            "keep_checkpoints": 2,
            "preview_every": max(1, steps // 2),
        }
    )


VARIANTS = (None, "tiny")


def check_variant(arg: str | None) -> None:
    """Every config has the full variant (no argument) and ``tiny``."""
    if arg not in VARIANTS:
        raise UserError(f"unknown config variant {arg!r}; accepted: tiny (or none)")


def base(task: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = task
    config.seed = 0
    # Data parallel over every device; set fsdp (and data) to shard the weights.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.sharding_rules = ml_collections.ConfigDict(dict(parallel.FSDP_RULES))
    config.model = ml_collections.ConfigDict({"dtype": "float32"})
    return config
