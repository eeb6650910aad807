"""Encodings of a fixed data set by frozen encoders, computed once and read instead of the images.

When the autoencoder and the text encoder are frozen (fine-tuning; a class-conditional model,
which has no text encoder), every step would encode the same records again. With
``train.cache_encodings`` a run encodes each record of the source once, the posterior moments
(mean, log-variance) of its image and the text encoder's output for its caption (a class
model's: the class label), stores them under ``WORKDIR/encodings/FINGERPRINT/`` and reads them by
record index; the latents are still sampled from the moments with each example's own key, so a
step gives the loss of the uncached step (up to the encoders' rounding in another batch).

The fingerprint hashes the encoders' weights, the data config and the compute dtype: changed
weights or data make a new cache, and the stale one is removed. Records must read the same every
time (center crop, no flip, one caption per record).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff.atomic_write import atomic_path
from jaxdiff.data.pipeline import ImageTextDataset
from jaxdiff.errors import UserError, require
from jaxdiff.models.text_to_image import TextToImageModel

CACHE_DIR = "encodings"
_FILES = ("moments.npy", "context.npy", "unconditional.npy")


def check_cacheable(config: ml_collections.ConfigDict) -> None:
    """One-line errors for a data stream whose records do not read the same every time."""
    data = config.data
    require(
        data.crop == "center" and not data.flip,
        f"train.cache_encodings needs data.crop='center' and data.flip=False (got "
        f"{data.crop!r}, {data.flip}): augmented images differ each time they are read",
    )
    require(
        jax.process_count() == 1,
        "train.cache_encodings runs in one process; turn it off for multi-process runs",
    )


def fingerprint(model: TextToImageModel, config: ml_collections.ConfigDict) -> str:
    """A hash of the encoders' weights, the data config and the compute dtype."""
    digest = hashlib.sha256()
    data = {k: v for k, v in config.data.to_dict().items() if k != "threads"}
    digest.update(json.dumps([data, config.model.dtype], sort_keys=True, default=str).encode())
    for module in (model.autoencoder, model.text_encoder):
        if module is None:  # a class-conditional model has no text encoder
            continue
        for leaf in jax.tree.leaves(nnx.state(module)):
            digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()[:20]


class EncodingCache:
    """The stored encodings: ``moments`` `[N, h, w, 2c]`, ``context`` `[N, T, D]` (memory-mapped)
    and the empty prompt's ``unconditional`` context `[1, T, D]`; a class-conditional model's
    context is its class labels `[N, 1]` int32 (the null class `[1, 1]`)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.moments, self.context, self.unconditional = (
            np.load(directory / name, mmap_mode="r") for name in _FILES
        )

    def batch(self, data: ImageTextDataset, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The cached ``moments`` and ``context`` of the examples at ``positions`` of ``data``'s
        stream (read by their records)."""
        records = data.source_indices(positions)
        return {"moments": self.moments[records], "context": self.context[records]}


def prepare(
    model: TextToImageModel,
    config: ml_collections.ConfigDict,
    data: ImageTextDataset,
    text_ids: Callable[[list[str]], np.ndarray],
    workdir: Path,
    batch_size: int = 64,
) -> EncodingCache:
    """The cache of ``model``'s frozen encoders for ``data``: read if its fingerprint matches,
    else computed (and any stale cache removed)."""
    root = workdir / CACHE_DIR
    directory = root / fingerprint(model, config)
    if not directory.is_dir():
        if root.is_dir():
            shutil.rmtree(root)
        _build(model, data, text_ids, directory, batch_size)
    return EncodingCache(directory)


def _check_single_captions(source) -> None:
    """A record with several captions gets a random one each time it is read: not cacheable."""
    captions = getattr(source, "captions", None)  # an image-caption folder's
    several = captions is not None and any(not isinstance(c, str) for c in captions)
    if several or getattr(source, "caption_key", ""):  # tfds text features may hold lists
        raise UserError(
            f"train.cache_encodings needs one caption per record; {source.name} may have several"
        )


@nnx.jit
def _encode(model: TextToImageModel, images: jax.Array, ids: jax.Array):
    """images [B, H, W, 3], ids [B, T] -> moments [B, h, w, 2c], context [B, T, D] (float32;
    a class-conditional model's: its labels [B, 1])."""
    mean, logvar = model.autoencoder.encode(images)
    moments = jax.numpy.concatenate([mean, logvar], axis=-1).astype(jax.numpy.float32)
    if model.class_conditional:
        return moments, ids
    return moments, model.encode_text(ids).astype(jax.numpy.float32)


def _build(model, data: ImageTextDataset, text_ids, directory: Path, batch_size: int) -> None:
    """Encodes every record of ``data``'s source in order into ``directory`` (written whole or
    not at all: ``atomic_path``)."""
    _check_single_captions(data.source)
    count = len(data.source)
    with atomic_path(directory, directory=True) as partial:
        files = {}
        for start, batch in data.unaugmented().batches(range(count), batch_size):
            positions = np.arange(start, start + len(batch["caption"]))
            moments, context = jax.device_get(
                _encode(model, batch["image"], text_ids(batch["caption"]))
            )
            if not files:
                files = {
                    name: np.lib.format.open_memmap(
                        partial / f"{name}.npy", "w+", value.dtype, (count, *value.shape[1:])
                    )
                    for name, value in (("moments", moments), ("context", context))
                }
            files["moments"][positions] = moments
            files["context"][positions] = context
        for array in files.values():
            array.flush()
        _, unconditional = jax.device_get(
            _encode(model, batch["image"][:1], text_ids([""]))
        )  # [1, T, D]
        np.save(partial / "unconditional.npy", unconditional)
