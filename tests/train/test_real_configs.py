"""The configs for real runs, in their tiny variants, train on CPU (tfds mocked, no download)."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from tiny_finetune import finetune_config

from jaxdiff.configuration import load_config
from jaxdiff.convert.pipeline_components import load_pipeline_components
from jaxdiff.errors import UserError
from jaxdiff.images import read_png_text
from jaxdiff.train.tasks import load_trained, make_task
from jaxdiff.train.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_cifar10_edm_tiny(tmp_path):
    config = load_config(
        f"{CONFIGS / 'cifar10_edm.py'}:tiny",
        ["train.steps=2", "train.log_every=1", "train.preview_every=0"],
    )
    config.sample.preview_prompts = ("a photo of a 3",)  # mocked class names are digits
    with tfds.testing.mock_data(num_examples=16):
        summary = train(config, tmp_path, progress=False)
    assert summary["steps"] == 2
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == 2 and np.all(np.isfinite(losses))


@pytest.mark.parametrize(("name", "denoiser"), [("shapes_flow", "unet"), ("shapes_dit", "mmdit")])
def test_shapes_flow_tiny_trains_and_samples(name, denoiser, tmp_path):
    """Flow matching from its config: the rectified-flow process and the velocity network (the
    UNet, or the MMDiT transformer: one config line) train, and the preview samples through the
    pipeline."""
    config = load_config(
        f"{CONFIGS / name}.py:tiny",
        ["train.steps=2", "train.log_every=1", "train.preview_every=2"],
    )
    assert train(config, tmp_path, progress=False)["steps"] == 2
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    preview = next((tmp_path / "samples").glob("*.png"))
    assert read_png_text(preview)["sampler"] == "heun"
    saved = json.loads((tmp_path / "config.json").read_text())
    diffusion = saved["diffusion"]
    assert (diffusion["process"], diffusion["parameterization"]) == ("rectified_flow", "velocity")
    _, model = load_trained(tmp_path, use_ema=False)
    assert saved["model"].get("denoiser", "unet") == denoiser
    assert (model.transformer is None) == (denoiser == "unet")


def test_mmdit_options_the_task_sets_are_refused():
    config = load_config(f"{CONFIGS / 'shapes_dit.py'}:tiny")
    with config.unlocked():
        config.model.mmdit.sample_size = 8
    with pytest.raises(UserError, match=r"model.mmdit.sample_size is set by the task"):
        make_task(config)


def test_sd15_finetune_tiny(tmp_path):
    """Two steps on encodings cached from the frozen encoders, a preview, sampling."""
    workdir = tmp_path / "run"
    (workdir / "pretrained").mkdir(parents=True)  # left by a run that died before its first save
    config = finetune_config(
        tmp_path, "train.steps=2", "train.log_every=1", "train.cache_encodings=True"
    )
    model_dir = Path(config.pretrained)
    config.train.preview_every = 2
    summary = train(config, workdir, progress=False)
    assert summary["steps"] == 2
    _, model = load_trained(workdir, use_ema=False)
    pretrained = load_pipeline_components(model_dir)
    # The frozen networks keep the pretrained weights exactly; the UNet moved.
    for frozen, original in (
        (model.autoencoder, pretrained.vae),
        (model.text_encoder, pretrained.text_encoder),
    ):
        for a, b in zip(
            jax.tree.leaves(nnx.state(frozen, nnx.Param)),
            jax.tree.leaves(nnx.state(original, nnx.Param)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(nnx.state(model.unet, nnx.Param)),
            jax.tree.leaves(nnx.state(pretrained.unet, nnx.Param)),
            strict=True,
        )
    ]
    assert any(moved)
    assert float(model.latent_scale[...]) == pytest.approx(pretrained.vae.scaling_factor)
    # The workdir alone describes the model: the model folder is no longer needed.
    shutil.rmtree(model_dir)
    _, model = load_trained(workdir)
    assert isinstance(model.unet, type(pretrained.unet))
    preview = next((workdir / "samples").glob("*.png"))
    assert read_png_text(preview)["prompt"] == "a red bicycle | a lighthouse"
    assert len(list((workdir / "encodings").iterdir())) == 1


def test_sd15_finetune_needs_a_model_and_data(tmp_path):
    config = load_config(f"{CONFIGS / 'sd15_finetune.py'}:tiny")
    with pytest.raises(UserError, match=r"pretrained is empty; give a diffusers model folder"):
        train(config, tmp_path, progress=False)
