"""The class-conditional DiT of `configs/imagenet_dit.py` on tfds' mocked `imagenet2012`: Stable
Diffusion's VAE format loaded frozen (`pretrained_vae`), its encodings cached, the label dropped
to the null class, the run sampled by class name or id."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from random_weights import random_model

from jaxdiff.configuration import load_config
from jaxdiff.convert import from_diffusers, to_diffusers
from jaxdiff.errors import UserError
from jaxdiff.models.class_names import ClassNames
from jaxdiff.models.vae import AutoencoderKL
from jaxdiff.train.step import example_keys
from jaxdiff.train.tasks import load_trained, make_task, split_keys
from jaxdiff.train.text_to_image_task import caption_dropout_loss
from jaxdiff.train.trainer import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "imagenet_dit.py"
# A random VAE of the SD layout, two levels: 8 px latents of 16 px images.
VAE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, scaling_factor=0.37)
EXAMPLES = 12


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory) -> Path:
    """The VAE in diffusers' format."""
    folder = tmp_path_factory.mktemp("vae")
    to_diffusers(random_model(lambda: AutoencoderKL(**VAE, rngs=nnx.Rngs(0)), seed=5), folder)
    return folder


def config(vae_folder: Path, *overrides: str):
    return load_config(
        f"{CONFIG}:tiny",
        [f"pretrained_vae={vae_folder}", "train.preview_every=0", "train.log_every=1", *overrides],
    )


@pytest.fixture(scope="module")
def run(vae_folder, tmp_path_factory) -> Path:
    """Two steps on the cached latents of the frozen VAE."""
    workdir = tmp_path_factory.mktemp("dit")
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        train(config(vae_folder, "train.cache_encodings=True"), workdir, progress=False)
    return workdir


def test_the_run_keeps_the_frozen_vae_its_scale_and_the_class_names(run, vae_folder):
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        task, model = load_trained(run)
        labels = [int(r["label"]) for r in tfds.data_source("imagenet2012", split="train")]
    assert model.text_encoder is None and type(model.transformer).__name__ == "DiT"
    assert model.transformer.num_classes == 1000 and len(task.tokenizer) == 1000
    assert float(model.latent_scale[...]) == pytest.approx(0.37)
    frozen = nnx.state(model.autoencoder, nnx.Param)
    given = nnx.state(from_diffusers(vae_folder), nnx.Param)
    for (path, a), (_, b) in zip(nnx.to_flat_state(frozen), nnx.to_flat_state(given), strict=True):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
    assert json.loads((run / "class_names.json").read_text())[0] == "n01440764"
    (cache,) = (run / "encodings").iterdir()
    assert np.load(cache / "context.npy").tolist() == [[label] for label in labels]
    assert np.load(cache / "unconditional.npy").tolist() == [[1000]]
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
    assert len(losses) == 2 and np.all(np.isfinite(losses))


def test_cached_latents_and_labels_give_the_uncached_loss(run, vae_folder, tmp_path):
    """The same per-example losses, dropped labels included, from the cache and from the
    images; dropped labels are the null class, at about the configured rate."""
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        cached, model = load_trained(run)
        cached.prepare(model, run)
        uncached = make_task(config(vae_folder), tmp_path)
    positions = np.arange(4, 4 + EXAMPLES)
    keys = example_keys(jax.random.key(0), 3, len(positions))
    loss = nnx.jit(lambda model, batch, task: task.loss(model, batch)[0], static_argnums=2)
    with_cache = loss(model, {**cached.batch(positions), "key": keys}, cached)
    without = loss(model, {**uncached.batch(positions), "key": keys}, uncached)
    np.testing.assert_allclose(with_cache, without, rtol=1e-5, atol=1e-6)
    _, drop_keys, _ = split_keys(keys, 3)  # as the loss draws them: some labels are dropped
    assert 0 < sum(bool(jax.random.bernoulli(k, 0.1, (1,))[0]) for k in drop_keys) < len(positions)

    seen = []

    def network(x, t, context):  # records the labels the denoiser is given
        (labels,) = context
        seen.append(np.asarray(labels))
        return jnp.zeros_like(x)

    batch = {**cached.batch(np.arange(64)), "key": example_keys(jax.random.key(1), 0, 64)}
    caption_dropout_loss(cached.diffusion, 0.5, cached.unconditional_ids, model, batch, network)
    given = batch["context"][:, 0]
    dropped = seen[0] != given
    assert np.all(seen[0][dropped] == 1000) and 16 <= dropped.sum() <= 48


def test_samples_by_class_name_or_id_guided_by_the_null_class(run):
    """On the run's DiT moved far from its zero-initialised modulations, so that the class
    label changes the output."""
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        task, model = load_trained(run)
    rng = np.random.RandomState(0)
    for _, variable in nnx.to_flat_state(nnx.state(model.transformer, nnx.Param)):
        variable.set_value(variable[...] + 0.05 * rng.randn(*variable.shape).astype(np.float32))
    pipe = task.pipeline(model)
    settings = dict(num_inference_steps=2, seed=0, output_type="latent")
    by_name = pipe(["n01440764", "n01443537"], **settings)
    assert by_name.shape == (2, 8, 8, 4) and np.all(np.isfinite(by_name))
    np.testing.assert_array_equal(pipe(["0", "1"], **settings), by_name)
    scale = np.abs(by_name).max()
    other_classes = pipe(["2", "3"], **settings)
    unguided = pipe(["n01440764", "n01443537"], **settings, guidance_scale=1.0)
    null_negative = pipe(["0", "1"], negative_prompt=["", ""], **settings)
    np.testing.assert_array_equal(null_negative, by_name)  # the default negative: the null class
    for other in (other_classes, unguided):
        assert np.abs(other - by_name).max() > 1e-3 * scale
    with pytest.raises(UserError, match=r"prompt 'otter' is not a class of this model; accepted"):
        pipe(["otter"], **settings)


def test_class_names_refuse_what_they_cannot_encode():
    names = ClassNames(["cat", "dog"])
    assert names.encode(["dog", "", 0, "1"]).ravel().tolist() == [1, 2, 0, 1]
    for prompt in ("cow", 2, "-1", True):
        with pytest.raises(UserError, match=r"is not a class of this model; accepted: its class"):
            names.encode([prompt])
    with pytest.raises(UserError, match=r"class names must differ; 1 repeat another"):
        ClassNames(["cat", "cat"])


def shapes_with(**fields):
    config = load_config(f"{CONFIG.with_name('shapes_dit.py')}:tiny")
    with config.unlocked():
        config.model.denoiser = fields.get("denoiser", "mmdit")
        config.train.cache_encodings = fields.get("cache", False)
    return config


def imagenet_with(**fields):
    config = load_config(f"{CONFIG}:tiny")
    with config.unlocked():
        config.update({k: v for k, v in fields.items() if k != "sample_size"})
        if "sample_size" in fields:
            config.model.dit.sample_size = fields["sample_size"]
    return config


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: shapes_with(denoiser="dit"), r"class-conditional: its data needs class labels"),
        (lambda: shapes_with(cache=True), r"cache_encodings .* accepted for a class-conditional"),
        (
            lambda: imagenet_with(vae_workdir="runs/vae", pretrained_vae="runs/sd-vae"),
            r"vae_workdir 'runs/vae' and pretrained_vae 'runs/sd-vae' both name the autoencoder",
        ),
        (lambda: imagenet_with(sample_size=8), r"model.dit.sample_size is set by the task"),
    ],
)
def test_bad_class_conditional_configs_are_refused(make, message):
    with tfds.testing.mock_data(num_examples=EXAMPLES), pytest.raises(UserError, match=message):
        make_task(make())
