"""Adapters trained on a jaxdiff text-to-image run (`base_workdir`: two steps of
`configs/shapes_t2i.py:tiny`): a ControlNet steered by the shapes' masks
(`configs/shapes_controlnet.py:tiny`) and a LoRA on the combinations the base held out
(`configs/shapes_lora.py:tiny`).

The base run's networks stay its EMA weights bit for bit and only the adapters move; at
conditioning scale 0 the ControlNet run's pipeline makes the base run's images exactly, at scale 1
others; the LoRA file, loaded into the base run's pipeline, makes the LoRA run's images.
"""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.cli import main
from jaxdiff.configuration import load_config
from jaxdiff.convert.lora_files import WEIGHT_NAME
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.errors import UserError
from jaxdiff.images import read_png_text, save_png, to_uint8
from jaxdiff.train import trained_base
from jaxdiff.train.controlnet_task import EXPORT_DIR, RunControlNetTask
from jaxdiff.train.lora_task import RunLoRATask
from jaxdiff.train.tasks import load_task, load_trained, make_task
from jaxdiff.train.trainer import train

BASE = ("train.steps=2", "train.preview_every=0", "train.log_every=1")
# No warmup and a learning rate far above the configs': two steps move the zero convolutions and
# the LoRA up-projections far from zero.
ADAPTER = ("train.steps=2", "train.warmup_steps=0", "train.learning_rate=0.05")
PROMPTS = ["a red circle in the top left corner", "a blue square in the center"]
# The preview's sampler settings and batch: the ControlNet's sampling loop compiles once.
SAMPLING = {"num_inference_steps": 4, "seed": 5}
BASE_WEIGHTS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained_base") / "base"
    train(load_config("shapes_t2i:tiny", list(BASE)), workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def runs(base_run):
    """(base workdir, ControlNet workdir, the ControlNet run's config)."""
    config = adapter_config("shapes_controlnet", base_run, *ADAPTER, "train.preview_every=2")
    train(config, base_run.parent / "controlnet", progress=False)
    return base_run, base_run.parent / "controlnet", config


@pytest.fixture(scope="module")
def lora_run(base_run):
    workdir = base_run.parent / "lora"
    train(adapter_config("shapes_lora", base_run, *ADAPTER), workdir, progress=False)
    return workdir


def adapter_config(name, base, *overrides):
    return load_config(f"{name}:tiny", [f"base_workdir={base}", *overrides])


def assert_base_weights(model, base):
    """The base run's networks in ``model``, bit for bit, and its latent scale."""
    for name in ("unet", "text_encoder"):
        for a, b in zip(
            jax.tree.leaves(nnx.state(getattr(model, name), BASE_WEIGHTS)),
            jax.tree.leaves(nnx.state(getattr(base, name), nnx.Param)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} moved")
    assert float(model.latent_scale[...]) == float(base.latent_scale[...])


def test_only_the_controlnet_trains(runs):
    base_dir, workdir, _ = runs
    _, base = load_trained(base_dir)
    task, model = load_trained(workdir, use_ema=False)
    assert isinstance(task, RunControlNetTask)
    assert_base_weights(model, base)
    for conv in [*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_mid_block]:
        assert np.abs(np.asarray(conv.kernel[...])).max() > 1e-3
    assert any((workdir / "samples").iterdir())
    exported = json.loads((workdir / EXPORT_DIR / "config.json").read_text())
    assert exported["_class_name"] == "ControlNetModel"


def test_the_controlnet_steers_the_base_model_and_scale_0_is_the_base(runs):
    base_dir, workdir, config = runs
    base_task, base = load_trained(base_dir)
    task, model = load_trained(workdir)
    masks = make_dataset(config.data).unaugmented().batch(np.arange(2))["conditioning_image"]
    want = base_task.pipeline(base)(PROMPTS, **SAMPLING)  # [2, 16, 16, 3] in [0, 1]
    pipeline = task.pipeline(model)
    off = pipeline(PROMPTS, control_image=masks, controlnet_conditioning_scale=0.0, **SAMPLING)
    on = pipeline(PROMPTS, control_image=masks, **SAMPLING)
    np.testing.assert_array_equal(off, want)
    assert np.abs(on - want).max() > 0.05


def test_sample_the_run_without_its_base(runs, tmp_path):
    """A trained run needs only its workdir: its base may be gone."""
    _, workdir, config = runs
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    task = load_task(copy, [f"base_workdir={tmp_path / 'gone'}"])
    assert isinstance(task, RunControlNetTask)
    masks = make_dataset(config.data).unaugmented().batch(np.arange(1))["conditioning_image"]
    control = tmp_path / "mask.png"
    save_png(control, to_uint8(masks[0], (0.0, 1.0)))
    out = tmp_path / "grid.png"
    argv = ["sample", "--workdir", str(copy), "--prompt", PROMPTS[0], "--steps", "4"]
    argv += ["--num-images", "2"]
    assert main([*argv, "--control-image", str(control), "--out", str(out)]) == 0
    assert read_png_text(out)["control_image"] == str(control)


def test_a_run_resumes_without_its_base(runs, tmp_path, monkeypatch):
    """A crash after step 1's checkpoint: the rerun reads its own workdir alone (the base run is
    never opened) and ends with the uninterrupted run's weights."""
    _, workdir, config = runs
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "2")
    shutil.rmtree(copy / EXPORT_DIR)

    def refuse(*args, **kwargs):
        raise AssertionError("the base run was read")

    monkeypatch.setattr(trained_base, "check_base", refuse)
    monkeypatch.setattr(trained_base, "restore_weights", refuse)
    assert train(config, copy, progress=False)["trained"] == 1
    for use_ema in (False, True):
        resumed = nnx.state(load_trained(copy, use_ema)[1], nnx.Param)
        uninterrupted = nnx.state(load_trained(workdir, use_ema)[1], nnx.Param)
        for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
            np.testing.assert_array_equal(a, b)
    assert (copy / EXPORT_DIR / "config.json").is_file()


def test_bad_bases_are_one_line_errors(base_run, tmp_path):
    def task(*overrides, base=base_run, name="shapes_controlnet"):
        return make_task(adapter_config(name, base, *overrides))

    with pytest.raises(UserError, match="base_workdir is empty; accepted: the workdir of a"):
        task(base="")
    with pytest.raises(UserError, match="has no checkpoint; train one first"):
        task(base=tmp_path, name="shapes_lora")
    with pytest.raises(
        UserError,
        match=r"model.unet.block_out_channels=\[16, 64\] but base_workdir .* was trained with "
        r"\[16, 32\]; accepted: the base run's value",
    ):
        task("model.unet.block_out_channels=16,64")
    with pytest.raises(UserError, match=r"diffusion.process='vp' but .* with 'edm'; accepted"):
        task("diffusion.process=vp", name="shapes_lora")
    with pytest.raises(UserError, match="the base run's autoencoder is used; accepted: ''"):
        task(f"vae_workdir={base_run}")
    with pytest.raises(UserError, match="pretrained_vae='sd-vae': the base run's autoencoder"):
        task("pretrained_vae=sd-vae")
    with pytest.raises(UserError, match="has 2 stages: the conditioning images at 2x the"):
        task("controlnet.conditioning_embedding_out_channels=8,8")
    transformer_base = tmp_path / "transformer_base"
    shutil.copytree(base_run, transformer_base)
    saved = json.loads((transformer_base / "config.json").read_text())
    saved["model"]["denoiser"] = "mmdit"
    (transformer_base / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"trained model.denoiser='mmdit'; LoRA and ControlNet"):
        task(base=transformer_base, name="shapes_lora")


def test_only_the_lora_trains_and_its_file_makes_the_run_images(base_run, lora_run):
    base_task, base = load_trained(base_run)
    task, model = load_trained(lora_run, use_ema=False)
    assert isinstance(task, RunLoRATask)
    assert_base_weights(model, base)
    ups = [a for p, a in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)) if "up" in p]
    assert ups and all(np.abs(np.asarray(a[...])).max() > 1e-3 for a in ups)
    want = task.pipeline(load_trained(lora_run)[1])(PROMPTS, **SAMPLING)
    pipeline = base_task.pipeline(base)
    without = pipeline(PROMPTS, **SAMPLING)
    pipeline.load_lora_weights(lora_run / WEIGHT_NAME)
    np.testing.assert_allclose(pipeline(PROMPTS, **SAMPLING), want, rtol=0, atol=1e-5)
    assert np.abs(without - want).max() > 0.05  # the adapters matter
