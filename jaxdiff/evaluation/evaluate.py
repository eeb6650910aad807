"""`jaxdiff eval` and the trainer's periodic evaluation of a text-to-image model.

``config.eval`` names the metrics (`METRICS`) and their settings. Images are generated for the
captions of the first ``num_samples`` examples of the run's data stream, one per caption, with
the config's sampler settings:

- ``fid``, ``kid``, ``precision_recall``: against the features of those same data examples,
  extracted by ``eval.features`` ("inception": pytorch-fid's InceptionV3 from
  ``eval.inception_weights``; "clip": CLIP's image tower from ``eval.clip_model``) and cached in
  ``WORKDIR/eval/`` under a name that changes with the data, the extractor and its weights; or,
  for FID, against saved statistics (``eval.reference``, an ``.npz`` of ``mu`` and ``sigma``).
- ``clip_score``: CLIP score of each generated image with its caption (``eval.clip_model``).
- ``adherence``: prompt adherence on ``shapes`` (every held-out combination,
  ``eval.samples_per_prompt`` images each): fractions with the right shape, colour, position.
- ``bits_per_dim``: negative log-likelihood of the data examples through the probability-flow
  ODE, uniformly dequantized (pixel-space models only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxdiff.configuration import require
from jaxdiff.data.pipeline import ImageTextDataset
from jaxdiff.errors import UserError
from jaxdiff.evaluation import fid as fid_lib

METRICS = ("fid", "kid", "precision_recall", "clip_score", "adherence", "bits_per_dim")
FEATURES = ("inception", "clip")
_IMAGE_METRICS = ("fid", "kid", "precision_recall")


def metric_names(settings: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``eval.metrics``, a comma-separated string ("fid,kid"), as names."""
    return tuple(name.strip() for name in settings.metrics.split(",") if name.strip())


def validate_eval_config(
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
    require(
        settings.features in FEATURES,
        f"eval.features {settings.features!r} is not supported; accepted: {', '.join(FEATURES)}",
    )
    features = any(m in metrics for m in _IMAGE_METRICS)
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


def _generated(generate, prompts: list[str], settings) -> np.ndarray:
    """One image per prompt, uint8 `[N, H, W, 3]`, each batch with its own seed."""
    size = settings.batch_size
    return np.concatenate(
        [generate(prompts[i : i + size], settings.seed + i) for i in range(0, len(prompts), size)]
    )


def reference_data(task, count: int) -> tuple[ImageTextDataset, int]:
    """The data examples generated images are compared with: the run's source, unshuffled,
    center-cropped and unflipped (no augmentation), and how many (``count``, at most the source's
    size: no example twice)."""
    data = task.data
    transform = dataclasses.replace(data.transform, crop="center", flip=False)
    return ImageTextDataset(data.source, transform, shuffle=False), min(count, len(data.source))


def _data_images(data: ImageTextDataset, count: int, batch_size: int):
    """uint8 images `[N, H, W, 3]` and captions of the first ``count`` examples of ``data``."""
    pictures, captions = [], []
    for start in range(0, count, batch_size):
        batch = data.batch(np.arange(start, min(count, start + batch_size)))
        pictures.append(np.rint((batch["image"] + 1.0) * 127.5).astype(np.uint8))
        captions += batch["caption"]
    return np.concatenate(pictures), captions


def extractor_for(settings: ml_collections.ConfigDict, clip=None):
    """The feature extractor ``eval.features`` names (``clip``: the loaded CLIP model)."""
    from jaxdiff.evaluation import features

    if settings.features == "inception":
        return features.inception(settings.inception_weights, batch_size=settings.batch_size)
    from jaxdiff.evaluation.clip_score import clip_image_extractor

    return clip_image_extractor(clip, batch_size=settings.batch_size)


def _cache_name(config: ml_collections.ConfigDict, settings, extractor_name: str, count: int):
    """Changes with the data config, the count, the extractor and its weights file."""
    weights = (
        settings.inception_weights if settings.features == "inception" else settings.clip_model
    )
    stat = Path(weights).stat()
    key = json.dumps(
        [
            config.data.to_dict(),
            count,
            extractor_name,
            str(weights),
            stat.st_size,
            stat.st_mtime_ns,
        ],
        sort_keys=True,
        default=str,
    )
    return f"reference_{extractor_name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _reference_features(task, extractor, settings, workdir, pictures_of) -> np.ndarray:
    """The data examples' features `[N, D]`, cached in ``WORKDIR/eval/`` as an ``.npz`` that
    also holds their ``mu`` and ``sigma`` (usable as ``eval.reference`` and by pytorch-fid)."""
    count = reference_data(task, settings.num_samples)[1]
    path = None
    if workdir is not None:
        path = workdir / "eval" / _cache_name(task.config, settings, extractor.name, count)
        if path.is_file():
            with np.load(path) as cached:
                if cached["features"].shape[0] == count:
                    return cached["features"]
    features = extractor(pictures_of())
    if path is not None and jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        stats = fid_lib.feature_statistics(features)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, features=features, mu=stats.mu, sigma=stats.sigma)
        partial.replace(path)
    return features


def image_metrics(
    generated: np.ndarray,
    reference: np.ndarray,
    metrics: tuple[str, ...],
    statistics: fid_lib.FeatureStatistics | None = None,
) -> dict[str, float]:
    """FID / KID / precision-recall of generated vs reference features `[N, D]`."""
    results: dict[str, float] = {}
    if "fid" in metrics:
        results["fid"] = fid_lib.fid(generated, statistics or reference)
    if "kid" in metrics:
        # Subsets of half the smaller set (at most 1000, Binkowski et al.) differ from one another.
        half = max(2, min(len(generated), len(reference)) // 2)
        results["kid"], results["kid_std"] = fid_lib.kid(
            generated, reference, subset_size=min(1000, half)
        )
    if "precision_recall" in metrics:
        results["precision"], results["recall"] = fid_lib.precision_recall(generated, reference)
    return results


def evaluate(task, model, config: ml_collections.ConfigDict, workdir: Path | None = None) -> dict:
    """The metrics ``config.eval.metrics`` of ``model`` (see the module docstring)."""
    settings = config.eval
    validate_eval_config(settings, config.data)
    metrics = metric_names(settings)
    if not metrics:
        return {}
    if not hasattr(task, "generator"):
        raise UserError(f"eval.metrics: a {config.task!r} model does not generate images")
    results: dict[str, float] = {}
    generate = task.generator(model)
    clip = None  # loaded once for the CLIP features and the CLIP score
    if "clip_score" in metrics or (
        settings.features == "clip" and any(m in metrics for m in _IMAGE_METRICS)
    ):
        from jaxdiff.evaluation.clip_score import load_clip

        clip = load_clip(settings.clip_model)
    if any(m in metrics for m in (*_IMAGE_METRICS, "clip_score")):
        data, count = reference_data(task, settings.num_samples)
        pictures, prompts = _data_images(data, count, settings.batch_size)
        generated = _generated(generate, prompts, settings)
    if any(m in metrics for m in _IMAGE_METRICS):
        extractor = extractor_for(settings, clip)
        features = extractor(generated)
        statistics = None
        if settings.reference:
            statistics = fid_lib.FeatureStatistics.load(settings.reference, dim=features.shape[1])
        reference = None
        if any(m in metrics for m in ("kid", "precision_recall")) or statistics is None:
            reference = _reference_features(task, extractor, settings, workdir, lambda: pictures)
        results.update(image_metrics(features, reference, metrics, statistics))
    if "clip_score" in metrics:
        from jaxdiff.evaluation.clip_score import clip_scorer, load_tokenizer

        score = clip_scorer(clip, load_tokenizer(settings.clip_model), settings.batch_size)
        scores = score(generated, prompts)
        results["clip_score"] = float(np.mean(scores))
    if "adherence" in metrics:
        results.update(_adherence(task, generate, settings))
    if "bits_per_dim" in metrics:
        results["bits_per_dim"] = _bits_per_dim(task, model, settings)
    return results


def evaluate_workdir(workdir: str | Path, overrides: list[str] = ()) -> tuple[int, dict]:
    """(step, metrics) of the newest EMA weights of a trained run, with ``config.eval`` of its
    saved config changed by ``overrides`` ("eval.metrics=fid", ...). Reference features are
    cached in ``WORKDIR/eval/``; the results are written to ``WORKDIR/eval/step_N.json``."""
    from jaxdiff.checkpoint import latest_step
    from jaxdiff.train.trainer import CHECKPOINT_DIR, load_model, load_task

    workdir = Path(workdir)
    for override in overrides:
        if not override.startswith("eval."):
            raise UserError(f"eval takes only eval.* overrides, got {override!r}")
    task = load_task(workdir, overrides)
    config = task.config
    if not metric_names(config.eval):
        raise UserError(
            "no metrics to compute; give --config.eval.metrics=NAME[,NAME...] "
            f"({', '.join(METRICS)})"
        )
    step = latest_step(workdir / CHECKPOINT_DIR)
    results = evaluate(task, load_model(task, workdir), config, workdir)
    if jax.process_index() == 0:
        path = workdir / "eval" / f"step_{step:07d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"step": step, **results}, indent=2) + "\n")
        partial.replace(path)
    return step, results


def _adherence(task, generate, settings) -> dict[str, float]:
    from jaxdiff.data.shapes import combinations, parse_holdout
    from jaxdiff.evaluation.prompt_adherence import evaluate as adherence

    held_out = parse_holdout(task.config.data.holdout) or tuple(combinations())
    scores = adherence(
        lambda prompts, seed: generate(list(prompts), seed),
        held_out,
        settings.samples_per_prompt,
        seed=settings.seed,
        batch_size=settings.batch_size,
    )
    return {f"adherence_{name}": scores[name] for name in ("shape", "colour", "position", "all")}


def _bits_per_dim(task, model, settings) -> float:
    from jaxdiff.evaluation.likelihood import bits_per_dim

    if getattr(model, "autoencoder", None) is not None:
        raise UserError(
            "eval metric 'bits_per_dim' needs a pixel-space model; this one works on latents"
        )
    process = task.diffusion.process
    denoiser = task.diffusion.denoiser(model.unet)
    data, count = reference_data(task, settings.bpd_images)
    pictures, captions = _data_images(data, count, settings.batch_size)
    totals = []
    for start in range(0, len(pictures), settings.batch_size):
        end = start + settings.batch_size
        context = model.encode_text(task.text_ids(captions[start:end]))  # [B, T, D]
        result = bits_per_dim(
            lambda x, sigma, context=context: denoiser(x, sigma, context),
            pictures[start:end],
            jax.random.key(settings.seed + start),
            sigma_min=process.sigma_min,
            sigma_max=process.sigma_max,
            steps=settings.bpd_steps,
        )
        totals.append(np.asarray(result.bits_per_dim))
    return float(np.mean(np.concatenate(totals)))
