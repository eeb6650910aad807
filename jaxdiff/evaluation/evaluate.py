"""`jaxdiff eval` and the trainer's periodic evaluation of a text-to-image model.

``config.eval`` names the metrics (`METRICS`) and their settings. Images are generated for the
captions of the first ``num_samples`` examples of the run's data set, one per caption, with the
config's sampler settings; image i is image i of ``eval.seed`` (the pipelines' ``first_index``),
so the numbers do not depend on ``eval.batch_size``, the number of devices or of processes:

- ``fid``, ``kid``, ``precision_recall``: against the features of those same data examples,
  extracted by ``eval.features`` ("inception": pytorch-fid's InceptionV3 from
  ``eval.inception_weights``; "clip": CLIP's image tower from ``eval.clip_model``) and cached in
  ``WORKDIR/eval/`` under a name that changes with the data, the extractor and its weights; or,
  for FID, against saved statistics (``eval.reference``, an ``.npz`` of ``mu`` and ``sigma``).
- ``clip_score``: CLIP score of each generated image with its caption (``eval.clip_model``).
- ``adherence``: prompt adherence on ``shapes`` (every held-out combination,
  ``eval.samples_per_prompt`` images each): fractions with the right shape, colour, position.
- ``bits_per_dim``: negative log-likelihood of the data examples through the probability-flow
  ODE, uniformly dequantized (pixel-space models only), example i with the key
  ``fold_in(key(eval.seed), i)``.

``jaxdiff eval`` writes each evaluation to a new file (``WORKDIR/eval/step_N_TIME_XXXXXX.json``
unless told where) with what it was computed with: the checkpoint step, the sampler settings
(``config.sample``, which overrides may change), ``config.eval`` and the image counts.

An `Evaluator` is built once per run: it loads the feature extractor's and CLIP's weights, reads
the data captions and computes (or reads the cached) reference features at its first call, and
its compiled programs serve every later evaluation. Each process generates, extracts and scores
its own share of the images on its own devices (``parallel.process_share``); the features and
per-image numbers are gathered on every process, which all compute the same metrics.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import secrets
import zipfile
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import parallel
from jaxdiff.atomic_write import atomic_path, write_atomically
from jaxdiff.config_groups import IMAGE_METRICS, METRICS, metric_names, validate_evaluation
from jaxdiff.data.pipeline import ImageTextDataset
from jaxdiff.errors import UserError, require
from jaxdiff.evaluation import fid as fid_lib
from jaxdiff.evaluation import likelihood
from jaxdiff.evaluation.prompt_adherence import generated_batches
from jaxdiff.item_keys import item_keys
from jaxdiff.train.tasks import (
    ImageTask,
    Task,
    generator,
    load_task,
    load_weights,
    require_image_task,
)


def reference_data(task: ImageTask, count: int) -> tuple[ImageTextDataset, int]:
    """The data examples generated images are compared with: the run's source, unshuffled,
    center-cropped and unflipped (no augmentation), and how many (``count``, at most the source's
    size: no example twice)."""
    return task.data.unaugmented(), min(count, len(task.data.source))


def _examples(data: ImageTextDataset, indices: range, batch_size: int):
    """``(start, uint8 images [n, H, W, 3], captions)`` for each batch of the examples
    ``indices`` of ``data``."""
    for start, batch in data.batches(indices, batch_size):
        yield start, np.rint((batch["image"] + 1.0) * 127.5).astype(np.uint8), batch["caption"]


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


def _read_cached(path: Path | None, count: int) -> np.ndarray | None:
    """The cached features `[count, D]` at ``path``, or None (also for an unreadable file: it
    is extracted and written again)."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as cached:
            features = cached["features"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return features if features.ndim == 2 and features.shape[0] == count else None


def _write_cached(path: Path, features: np.ndarray) -> None:
    """Features `[N, D]` with their ``mu`` and ``sigma`` (usable as ``eval.reference`` and by
    pytorch-fid), written whole or not at all."""
    stats = fid_lib.feature_statistics(features)
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.savez(handle, features=features, mu=stats.mu, sigma=stats.sigma)


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


class Evaluator:
    """``evaluator(model) -> {metric: value}``: the metrics ``config.eval.metrics`` of a task's
    models (see the module docstring). Built once; every process calls it together."""

    def __init__(
        self, task: Task, config: ml_collections.ConfigDict, workdir: str | Path | None = None
    ):
        settings = config.eval
        validate_evaluation(settings, config.data)
        self.task, self.settings = task, settings
        self.workdir = None if workdir is None else Path(workdir)
        self.metrics = metric_names(settings)
        if self.metrics:
            require_image_task(task, "eval.metrics")
        if "bits_per_dim" in self.metrics and not task.pixel_space:
            raise UserError(
                "eval metric 'bits_per_dim' needs a pixel-space model; this one works on latents"
            )
        self._features = any(m in self.metrics for m in IMAGE_METRICS)
        clip = None  # loaded once for the CLIP features and the CLIP score
        if "clip_score" in self.metrics or (self._features and settings.features == "clip"):
            from jaxdiff.evaluation.clip_score import load_clip

            clip = load_clip(settings.clip_model)
        self._extractor = extractor_for(settings, clip) if self._features else None
        self._scorer = None
        if "clip_score" in self.metrics:
            from jaxdiff.evaluation.clip_score import clip_scorer, load_clip_tokenizer

            tokenizer = load_clip_tokenizer(settings.clip_model)
            shared = self._extractor if settings.features == "clip" else None
            self._scorer = clip_scorer(clip, tokenizer, settings.batch_size, shared)
        self._data, self._count = reference_data(task, settings.num_samples)
        if self._features or self._scorer is not None:
            self._check_count(self._count, "eval.num_samples (capped at the data set's size)")
        self._captions: list[str] | None = None  # this process's share, read once
        self._reference: np.ndarray | None = None  # [count, D]
        self._statistics: fid_lib.FeatureStatistics | None = None  # eval.reference
        self._bpd_examples: dict[str, np.ndarray] | None = None  # this process's share
        self._bpd_count = 0
        self.counts: dict[str, int] = {}  # images behind each metric, after a call

    def __call__(self, model: nnx.Module) -> dict[str, float]:
        if not self.metrics:
            return {}
        results: dict[str, float] = {}
        generate = generator(self.task, model)
        if self._features or self._scorer is not None:
            results.update(self._image_results(generate))
        if "adherence" in self.metrics:
            results.update(self._adherence(generate))
        if "bits_per_dim" in self.metrics:
            results["bits_per_dim"] = self._bits_per_dim(model)
        return results

    @staticmethod
    def _check_count(count: int, name: str) -> None:
        processes = jax.process_count()
        require(
            count >= processes,
            f"{name} is {count}, fewer than the {processes} processes; give at least {processes}",
        )

    def _image_results(self, generate) -> dict[str, float]:
        """FID / KID / precision-recall and CLIP score of one image per data caption."""
        settings, share = self.settings, parallel.process_share(self._count)
        if self._captions is None:
            self._read_data(share)
        features, scores = [], []
        for start, pictures in generated_batches(
            generate, self._captions, settings.seed, settings.batch_size, share.start
        ):
            captions = self._captions[start : start + len(pictures)]
            if self._extractor is not None:
                features.append(self._extractor(pictures))  # [n, D]
            if self._scorer is not None:
                shared = features[-1] if settings.features == "clip" and features else None
                scores.append(self._scorer(pictures, captions, shared))  # [n]
        results: dict[str, float] = {}
        self.counts["generated_images"] = self.counts["data_images"] = self._count
        if features:
            generated = parallel.gather_shares(np.concatenate(features), self._count)  # [N, D]
            if settings.reference and "fid" in self.metrics and self._statistics is None:
                self._statistics = fid_lib.FeatureStatistics.load(
                    settings.reference, dim=generated.shape[1]
                )
            results.update(
                image_metrics(generated, self._reference, self.metrics, self._statistics)
            )
        if scores:
            results["clip_score"] = float(
                np.mean(parallel.gather_shares(np.concatenate(scores), self._count))
            )
        return results

    def _read_data(self, share: range) -> None:
        """This process's captions; the reference features, from the cache in ``WORKDIR/eval/``
        when every process has it, else extracted (each process its share) and cached."""
        path = None
        if self.workdir is not None and self._extractor is not None:
            name = _cache_name(self.task.config, self.settings, self._extractor.name, self._count)
            path = self.workdir / "eval" / name
        needed = self._extractor is not None and (
            not self.settings.reference
            or any(m in self.metrics for m in ("kid", "precision_recall"))
        )
        cached = _read_cached(path, self._count) if needed else None
        extract = needed and not parallel.everywhere(cached is not None)
        captions, features = [], []
        for _, pictures, batch_captions in _examples(self._data, share, self.settings.batch_size):
            captions += batch_captions
            if extract:
                features.append(self._extractor(pictures))
        self._captions = captions
        if extract:
            cached = parallel.gather_shares(np.concatenate(features), self._count)
            if path is not None and jax.process_index() == 0:
                _write_cached(path, cached)
        self._reference = cached

    def _adherence(self, generate) -> dict[str, float]:
        from jaxdiff.data.shapes import combinations, parse_holdout
        from jaxdiff.evaluation.prompt_adherence import prompts_and_targets, scores
        from jaxdiff.evaluation.shape_attributes import read_attributes

        settings = self.settings
        held_out = parse_holdout(self.task.config.data.holdout) or tuple(combinations())
        prompts, targets = prompts_and_targets(held_out, settings.samples_per_prompt)
        self._check_count(len(prompts), "the adherence image count")
        self.counts["adherence_images"] = len(prompts)
        share = parallel.process_share(len(prompts))
        read = [
            read_attributes(pictures)  # [n, 3]
            for _, pictures in generated_batches(
                generate,
                prompts[share.start : share.stop],
                settings.seed,
                settings.batch_size,
                share.start,
            )
        ]
        read_all = parallel.gather_shares(np.concatenate(read), len(prompts))  # [N, 3]
        result = scores(read_all == targets)
        return {
            f"adherence_{name}": result[name] for name in ("shape", "colour", "position", "all")
        }

    def _bits_per_dim(self, model) -> float:
        """Mean bits/dim of ``eval.bpd_images`` data examples, each process its share, in
        batches of one fixed size (one compilation for every evaluation of the run)."""
        settings, task = self.settings, self.task
        mesh = parallel.local_mesh()
        if self._bpd_examples is None:
            data, count = reference_data(task, settings.bpd_images)
            self._check_count(count, "eval.bpd_images (capped at the data set's size)")
            share = parallel.process_share(count)
            pictures, captions = [], []
            for _, batch_pictures, batch_captions in _examples(data, share, settings.batch_size):
                pictures.append(batch_pictures)
                captions += batch_captions
            self._bpd_count = count
            self._bpd_examples = {
                "images": np.concatenate(pictures),  # [n, H, W, 3] uint8
                "ids": task.text_ids(captions),  # [n, T]
                "keys": item_keys(jax.random.key(settings.seed), len(captions), share.start),
            }
        process = task.diffusion.process
        ode = likelihood.ODESettings(
            sigma_min=process.sigma_min, sigma_max=process.sigma_max, steps=settings.bpd_steps
        )
        graphdef, state = nnx.split(model)
        state = parallel.local_replica(state, mesh)
        self.counts["bpd_images"] = self._bpd_count
        share_size = len(self._bpd_examples["ids"])
        size = parallel.whole_batches(min(settings.batch_size, share_size), mesh)
        bits = parallel.map_batches(
            functools.partial(_bits_per_dim_batch, graphdef, task.diffusion, ode, state),
            self._bpd_examples,
            mesh,
            size,
        )  # [n]
        return float(np.mean(parallel.gather_shares(bits, self._bpd_count)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _bits_per_dim_batch(graphdef, diffusion, ode, state, images, ids, keys) -> jax.Array:
    """Bits/dim `[B]` of uint8 images `[B, H, W, 3]` given their captions' token ids `[B, T]`,
    example b dequantized and probed with ``keys[b]``."""
    model = nnx.merge(graphdef, state)
    context = model.encode_text(ids)  # [B, T, D] (and [B, D] pooled for a transformer)
    denoiser = diffusion.denoiser(model.network)
    result = likelihood.bits_per_dim(
        lambda x, sigma: denoiser(x, sigma, context), images, keys, ode=ode
    )
    return result.bits_per_dim


OVERRIDABLE = ("eval.", "sample.")  # what `jaxdiff eval` may change in a run's config


def evaluate_workdir(
    workdir: str | Path, overrides: list[str] = (), out: str | Path | None = None
) -> tuple[dict[str, Any], Path]:
    """The newest EMA weights of a trained run evaluated with ``config.eval`` and the sampler of
    ``config.sample`` of its saved config, changed by ``overrides`` ("eval.metrics=fid",
    "sample.steps=20", ...): the record of the evaluation (``step``, ``results`` and the
    settings) and the file process 0 wrote it to: ``out`` when it is a ``.json`` path, else a new
    file in the folder ``out`` (``WORKDIR/eval/`` by default) that no other evaluation writes.
    Reference features are cached in ``WORKDIR/eval/``. With several processes
    (``parallel.initialize_distributed``) each does its share."""
    workdir = Path(workdir)
    for override in overrides:
        if not override.startswith(OVERRIDABLE):
            raise UserError(
                f"eval takes only {' and '.join(p + '*' for p in OVERRIDABLE)} overrides, "
                f"got {override!r}"
            )
    parallel.initialize_distributed()
    task = load_task(workdir, overrides)
    config = task.config
    if not metric_names(config.eval):
        raise UserError(
            "no metrics to compute; give --config.eval.metrics=NAME[,NAME...] "
            f"({', '.join(METRICS)})"
        )
    step, model = load_weights(task, workdir)
    evaluator = Evaluator(task, config, workdir)
    results = evaluator(model)
    now = datetime.datetime.now(datetime.UTC)
    record = {
        "step": step,
        "workdir": str(workdir),
        "time": now.isoformat(timespec="seconds"),
        "results": results,
        "images": evaluator.counts,
        "sample": {k: v for k, v in config.sample.to_dict().items() if k != "preview_prompts"},
        "eval": config.eval.to_dict(),
    }
    path = Path(out) if out is not None else workdir / "eval"
    if path.suffix != ".json" or path.is_dir():
        path = path / f"step_{step:07d}_{now:%Y%m%dT%H%M%S}_{secrets.token_hex(3)}.json"
    if jax.process_index() == 0:
        write_atomically(path, json.dumps(record, indent=2, default=list) + "\n")
    return record, path
