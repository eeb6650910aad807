"""The config groups that jaxdiff reads for every task, with their defaults.

Config files build on them (``configs/common.py``). A workdir's saved config is checked against
them when it is read back (``missing_fields``): a config written by an older jaxdiff, which lacks
a newer field, is refused with one line naming the fields instead of failing where one is read.
Fields of one task or one data source (``model.unet``, ``sample``, ``data.path``, ...) are the
config file's own and are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from jaxdiff import parallel
from jaxdiff.errors import check_choice, require

OPEN_GROUPS = ("mesh", "sharding_rules")
"""Groups whose members may be left out: a mesh axis not named has size 1, a logical axis not
named is not sharded (``jaxdiff.parallel``)."""


def transform(
    image_size: int, resize: bool = False, crop: str = "center", flip: bool = False
) -> dict:
    """How records become square training images (``jaxdiff.data.pipeline.ImageTransform``)."""
    return {"image_size": image_size, "resize": resize, "crop": crop, "flip": flip}


def stream(shuffle: bool, threads: int, seed: int = 0) -> dict:
    """How the records are read (``jaxdiff.data.pipeline.ImageTextDataset``): shuffled anew
    every epoch or in order, by ``threads`` reader threads (0: none), with randomness from
    ``seed``."""
    return {"seed": seed, "shuffle": shuffle, "threads": threads}


def training(steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
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


METRICS = ("fid", "kid", "precision_recall", "clip_score", "adherence", "bits_per_dim")
IMAGE_METRICS = ("fid", "kid", "precision_recall")  # in a feature space
FEATURES = ("inception", "clip")


def metric_names(settings: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``eval.metrics``, a comma-separated string ("fid,kid"), as names."""
    return tuple(name.strip() for name in settings.metrics.split(",") if name.strip())


def validate_evaluation(
    settings: ml_collections.ConfigDict, data: ml_collections.ConfigDict
) -> None:
    """Validates ``config.eval`` against the data set before anything runs: each message names
    the value (a weights path that does not exist fails here, not after hours of training)."""
    metrics = metric_names(settings)
    unknown = [m for m in metrics if m not in METRICS]
    require(
        not unknown,
        f"eval.metrics names {', '.join(map(repr, unknown))}; accepted: {', '.join(METRICS)}",
    )
    require(settings.every >= 0, f"eval.every must be >= 0, got {settings.every}")
    require(
        not settings.every or bool(metrics),
        f"eval.every is {settings.every} but eval.metrics names none; "
        f"accepted: {', '.join(METRICS)}",
    )
    require(settings.num_samples >= 2, f"eval.num_samples must be >= 2, got {settings.num_samples}")
    require(settings.batch_size > 0, f"eval.batch_size must be > 0, got {settings.batch_size}")
    for name in ("samples_per_prompt", "bpd_images", "bpd_steps"):
        require(settings[name] > 0, f"eval.{name} must be > 0, got {settings[name]}")
    check_choice("eval.features", settings.features, FEATURES)
    features = any(m in metrics for m in IMAGE_METRICS)
    if features and settings.features == "inception":
        _require_path(
            settings.inception_weights,
            "eval.inception_weights",
            "the InceptionV3 weights file of pytorch-fid (pt_inception-2015-12-05-6726825d.pth) "
            "or torchvision",
        )
    if (features and settings.features == "clip") or "clip_score" in metrics:
        _require_path(settings.clip_model, "eval.clip_model", "a transformers CLIPModel folder")
    if settings.reference:
        _require_path(settings.reference, "eval.reference", "an .npz of mu and sigma")
    require(
        "adherence" not in metrics or data.name == "shapes",
        f"eval metric 'adherence' reads shapes images; data.name is {data.name!r}",
    )


def _require_path(value: str, name: str, accepted: str) -> None:
    require(bool(value), f"{name} is not set; give {accepted}")
    require(Path(value).exists(), f"{name} {value!r} does not exist; give {accepted}")


def base(task: str) -> ml_collections.ConfigDict:
    """A config of ``task`` with the groups every config shares but ``data`` and ``train``."""
    config = ml_collections.ConfigDict()
    config.task = task
    config.seed = 0
    # Data parallel over every device; set fsdp (and data) to shard the weights.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.sharding_rules = ml_collections.ConfigDict(dict(parallel.FSDP_RULES))
    config.model = ml_collections.ConfigDict({"dtype": "float32"})
    config.eval = evaluation()
    return config


def shared_fields() -> dict[str, Any]:
    """The fields every config holds, as nested dicts: ``base``, ``train`` and the ``data``
    fields that every source reads (the values are placeholders)."""
    config = base("").to_dict()
    config["train"] = training(1, 1, 1.0).to_dict()
    config["data"] = {"name": "", **transform(1), **stream(shuffle=False, threads=0)}
    return config


def missing_fields(saved: Mapping[str, Any]) -> list[str]:
    """The dotted names of the ``shared_fields`` that ``saved`` (a config as a dict) lacks, in
    their order there; a group that is missing whole is named alone."""
    return _missing(saved, shared_fields(), "")


def _missing(saved: Mapping[str, Any], expected: Mapping[str, Any], prefix: str) -> list[str]:
    names = []
    for key, value in expected.items():
        name = prefix + key
        group = saved.get(key)
        if key not in saved or (isinstance(value, dict) and not isinstance(group, Mapping)):
            names.append(name)
        elif isinstance(value, dict) and name not in OPEN_GROUPS:
            names += _missing(group, value, name + ".")
    return names
