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


def transform(
    image_size: int, resize: bool = False, crop: str = "center", flip: bool = False
) -> dict:
    """How records become square training images (``jaxdiff.data.pipeline.ImageTransform``)."""
    return {"image_size": image_size, "resize": resize, "crop": crop, "flip": flip}


def shapes_data(image_size: int = 32, holdout: str = SHAPES_HOLDOUT) -> ml_collections.ConfigDict:
    """The embedded captioned ``shapes`` data set (already random: not shuffled)."""
    return ml_collections.ConfigDict(
        {
            "name": "shapes",
            **transform(image_size),
            "seed": 0,
            "shuffle": False,
            "threads": 0,
            "background": "textured",
            "holdout": holdout,
        }
    )


def folder_data(
    path: str, image_size: int, crop: str = "center", flip: bool = False
) -> ml_collections.ConfigDict:
    """An image-caption folder (``captions.jsonl`` / ``metadata.jsonl`` / ``metadata.csv``)."""
    return ml_collections.ConfigDict(
        {
            "name": "folder",
            "path": path,
            "image_column": "file_name",
            "caption_column": "text",
            **transform(image_size, resize=True, crop=crop, flip=flip),
            "seed": 0,
            "shuffle": True,
            "threads": 8,
        }
    )


def tfds_data(
    tfds_name: str,
    image_size: int,
    *,
    split: str = "train",
    caption_key: str = "",
    label_key: str = "",
    caption_template: str = "{}",
    resize: bool = False,
    flip: bool = False,
) -> ml_collections.ConfigDict:
    """A tfds data set prepared as ArrayRecord, captioned by a text feature or class names."""
    return ml_collections.ConfigDict(
        {
            "name": "tfds",
            "tfds_name": tfds_name,
            "split": split,
            "data_dir": "",  # "" is tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
            "image_key": "image",
            "caption_key": caption_key,
            "label_key": label_key,
            "caption_template": caption_template,
            **transform(image_size, resize=resize, flip=flip),
            "seed": 0,
            "shuffle": True,
            "threads": 4,
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


def evaluation() -> ml_collections.ConfigDict:
    """``jaxdiff eval`` and the trainer's periodic evaluation (``jaxdiff.evaluation.evaluate``)."""
    return ml_collections.ConfigDict(
        {
            "every": 0,  # evaluate every so many training steps (0: never)
            "metrics": "",  # comma-separated: fid, kid, precision_recall, clip_score, ...
            "num_samples": 1000,  # generated images, and data images they are compared with
            "batch_size": 64,
            "seed": 0,
            "features": "inception",  # or "clip": the feature space of fid / kid / precision
            "inception_weights": "",  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
            "clip_model": "",  # a transformers CLIPModel folder (clip_score, features="clip")
            "reference": "",  # an .npz of mu and sigma: FID against saved statistics
            "samples_per_prompt": 4,  # adherence: images per held-out shapes prompt
            "bpd_images": 64,  # bits_per_dim: data images
            "bpd_steps": 100,  # bits_per_dim: RK4 steps of the probability-flow ODE
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
    config.eval = evaluation()
    return config
