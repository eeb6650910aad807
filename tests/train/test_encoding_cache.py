"""Encodings cached from the frozen encoders give the loss of the uncached step."""

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_finetune import finetune_config

from jaxdiff.errors import UserError
from jaxdiff.train.step import example_keys
from jaxdiff.train.tasks import make_task


def test_cached_encodings_give_the_uncached_loss_and_follow_the_weights(tmp_path):
    config = finetune_config(tmp_path, "train.cache_encodings=True")
    cached = make_task(config, tmp_path / "cached")
    model = cached.build_model(nnx.Rngs(0))
    cached.initialize(model, tmp_path / "cached")
    cached.prepare(model, tmp_path / "cached")
    plain = config.copy_and_resolve_references()
    plain.train.cache_encodings = False
    uncached = make_task(plain, tmp_path / "uncached")

    second_epoch = cached.data.source_indices(np.arange(6, 12))  # six records, reshuffled
    assert sorted(second_epoch) == list(range(6))
    assert list(second_epoch) != list(cached.data.source_indices(np.arange(6)))
    positions = np.arange(6, 14)
    keys = example_keys(jax.random.key(0), 3, len(positions))
    loss = nnx.jit(lambda model, batch, task: task.loss(model, batch)[0], static_argnums=2)
    with_cache = loss(model, {**cached.batch(positions), "key": keys}, cached)
    without = loss(model, {**uncached.batch(positions), "key": keys}, uncached)
    np.testing.assert_allclose(with_cache, without, rtol=1e-5, atol=1e-6)

    (directory,) = (tmp_path / "cached" / "encodings").iterdir()
    before = np.array(cached.cache.moments)
    model.autoencoder.quant_conv.kernel.set_value(model.autoencoder.quant_conv.kernel[...] * 1.5)
    cached.prepare(model, tmp_path / "cached")  # new weights: a new cache, the stale one removed
    (rebuilt,) = (tmp_path / "cached" / "encodings").iterdir()
    assert rebuilt != directory and not np.allclose(np.array(cached.cache.moments), before)


def test_augmented_data_cannot_be_cached(tmp_path):
    config = finetune_config(tmp_path, "train.cache_encodings=True", "data.flip=True")
    with pytest.raises(UserError, match=r"cache_encodings needs data.crop='center' and data"):
        make_task(config, tmp_path / "run")
