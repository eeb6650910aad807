"""ControlNet training (`configs/sd15_controlnet.py:tiny`) on the tiny Stable Diffusion model and
a folder of images with conditioning images in diffusers' layout.

The training objective is diffusers' `train_controlnet.py`'s: on the same latents, captions,
conditioning images, noise and timesteps, jaxdiff's loss and its gradient for every ControlNet
parameter equal PyTorch's (diffusers' `ControlNetModel` and `UNet2DConditionModel`) within 1e-5
of their scale, and 5% more noise misses the loss by more than 10x that. Only the ControlNet
trains and holds optimizer state; the run exports it as a diffusers folder with which diffusers'
ControlNet pipeline makes the run's own images. The run trains at a learning rate far above the
config's so that its two steps move the zero convolutions far from zero.
"""

import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from lora_runs import LATENT_TOLERANCE, PROMPTS, TOLERANCE, diffusers_run, errors, jaxdiff_run
from tiny_finetune import controlnet_config

from jaxdiff.cli import main
from jaxdiff.configuration import load_config
from jaxdiff.convert import from_diffusers
from jaxdiff.convert.diffusers import unet_table
from jaxdiff.convert.name_tables import state_dict
from jaxdiff.convert.pipeline_components import load_pipeline_components
from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError
from jaxdiff.images import read_png_text
from jaxdiff.parallel import check_rules, make_mesh
from jaxdiff.train.controlnet_task import EXPORT_DIR
from jaxdiff.train.optim import make_optimizer
from jaxdiff.train.state import build_layout
from jaxdiff.train.tasks import load_trained, make_task
from jaxdiff.train.trainer import train

# No warmup: the first step moves the zero convolutions, the second everything behind them.
OVERRIDES = (
    "train.steps=2",
    "train.warmup_steps=0",
    "train.learning_rate=0.02",
    "train.preview_every=2",
)
LOSS_TOLERANCE = 1e-5  # the loss: abs error over the reference's
GRADIENT_TOLERANCE = 1e-4  # each parameter's gradient: max abs error over its max |value|


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, config) of two steps at learning rate 0.02 from the first, with a preview."""
    root = tmp_path_factory.mktemp("controlnet")
    config = controlnet_config(root, *OVERRIDES)
    train(config, root / "run", progress=False)
    return root / "run", config


def test_only_the_controlnet_trains_and_holds_optimizer_state(trained):
    workdir, config = trained
    assert (workdir / "samples").is_dir() and any((workdir / "samples").iterdir())
    task, model = load_trained(workdir, use_ema=False)
    pretrained = load_pipeline_components(config.pretrained)
    for name, network, original in (
        ("unet", model.unet, pretrained.unet),
        ("vae", model.autoencoder, pretrained.vae),
        ("text_encoder", model.text_encoder, pretrained.text_encoder),
    ):
        for a, b in zip(
            jax.tree.leaves(nnx.state(network, nnx.Param)),
            jax.tree.leaves(nnx.state(original, nnx.Param)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} moved")
    # The zero convolutions left zero; the copied encoder left the UNet's weights.
    for conv in [*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_mid_block]:
        assert np.abs(np.asarray(conv.kernel[...])).max() > 1e-3
    assert not np.array_equal(model.controlnet.conv_in.kernel[...], model.unet.conv_in.kernel[...])
    mesh, rules = make_mesh(config.mesh), check_rules(config.sharding_rules)
    layout = build_layout(task, make_optimizer(config.train), mesh, rules)
    optimizer_sizes = sum(math.prod(a.shape) for a in jax.tree.leaves(layout.abstract[1]))
    controlnet_sizes = sum(math.prod(a.shape) for a in jax.tree.leaves(layout.abstract_ema))
    assert controlnet_sizes == sum(
        math.prod(a.shape) for a in jax.tree.leaves(nnx.state(model.controlnet, nnx.Param))
    )
    assert 2 * controlnet_sizes <= optimizer_sizes < 2 * controlnet_sizes + 16  # + counters


def _reference_loss(config, workdir, latents, ids, cond, noise, timesteps):
    """diffusers' `train_controlnet.py` loss and the ControlNet's gradients {name: array}."""
    from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(f"{config.pretrained}/unet")
    text_encoder = CLIPTextModel.from_pretrained(f"{config.pretrained}/text_encoder")
    controlnet = ControlNetModel.from_pretrained(workdir / EXPORT_DIR)
    scheduler = DDPMScheduler.from_pretrained(f"{config.pretrained}/scheduler")
    latents = torch.from_numpy(np.array(latents)).permute(0, 3, 1, 2)
    noise = torch.from_numpy(noise).permute(0, 3, 1, 2)
    timesteps = torch.from_numpy(timesteps)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        context = text_encoder(torch.from_numpy(ids).long())[0]
    down, mid = controlnet(
        noisy,
        timesteps,
        encoder_hidden_states=context,
        controlnet_cond=torch.from_numpy(cond).permute(0, 3, 1, 2),
        return_dict=False,
    )
    pred = unet(
        noisy,
        timesteps,
        context,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in controlnet.named_parameters()}
    return loss.item(), grads


def test_the_loss_and_its_gradients_are_diffusers_train_controlnet(trained):
    workdir, config = trained
    task, model = load_trained(workdir)
    batch = task.batch(np.arange(2))
    latents = np.asarray(model.encode_images(jnp.asarray(batch["image"])))  # posterior means
    rng = np.random.RandomState(0)
    noise = rng.randn(*latents.shape).astype(np.float32)
    timesteps = np.array([180, 730])
    want_loss, want_grads = _reference_loss(
        config, workdir, latents, batch["ids"], batch["conditioning_image"], noise, timesteps
    )
    uniform = Diffusion(task.diffusion.process, task.diffusion.parameterization)
    alphas = task.diffusion.process.alphas_cumprod[timesteps]
    sigmas = jnp.asarray(np.sqrt((1 - alphas) / alphas), jnp.float32)
    context = model.encode_text(jnp.asarray(batch["ids"]))
    trainable = nnx.All(nnx.Param, nnx.PathContains("controlnet"))
    graphdef, params, rest = nnx.split(model, trainable, ...)

    def loss(params, noise):
        steered = nnx.merge(graphdef, params, rest).steered
        cond = batch["conditioning_image"]
        return uniform.loss_at(steered, jnp.asarray(latents), noise, sigmas, context, cond).mean()

    value, grads = jax.jit(jax.value_and_grad(loss))(params, jnp.asarray(noise))
    assert abs(float(value) - want_loss) < LOSS_TOLERANCE * want_loss, (float(value), want_loss)
    wrong = float(jax.jit(loss)(params, jnp.asarray(1.05 * noise)))
    assert abs(wrong - want_loss) > 10 * LOSS_TOLERANCE * want_loss, (wrong, want_loss)
    gradients = nnx.merge(graphdef, grads, rest).controlnet  # a ControlNet holding gradients
    got_grads = state_dict(unet_table(dict(gradients.architecture)), gradients)
    assert sorted(got_grads) == sorted(want_grads)
    for key, want in want_grads.items():  # each parameter's gradient, on its own scale
        assert np.abs(want).max() > 0, key
        error = np.abs(got_grads[key] - want).max() / np.abs(want).max()
        assert error < GRADIENT_TOLERANCE, (key, error)


def test_the_exported_controlnet_makes_the_run_images_in_diffusers(trained):
    import diffusers

    workdir, config = trained
    task, model = load_trained(workdir)
    control = task.data.unaugmented().batch(np.arange(len(PROMPTS)))["conditioning_image"]
    in_run = jaxdiff_run(task.pipeline(model), control_image=control)
    reference = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        config.pretrained,
        controlnet=diffusers.ControlNetModel.from_pretrained(workdir / EXPORT_DIR),
        safety_checker=None,
    )
    reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    want = diffusers_run(reference, image=torch.from_numpy(control).permute(0, 3, 1, 2))
    image_error, latent_error = errors(in_run, want)
    assert image_error < TOLERANCE and latent_error < LATENT_TOLERANCE, (image_error, latent_error)
    off = jaxdiff_run(task.pipeline(model), control_image=control, controlnet_conditioning_scale=0)
    image_error, latent_error = errors(off, want)  # the trained ControlNet matters
    assert image_error > 10 * TOLERANCE and latent_error > 10 * LATENT_TOLERANCE


def test_sample_from_the_run_with_a_control_image(trained, tmp_path, capsys):
    workdir, config = trained
    control = tmp_path / "control.png"
    shutil.copy(Path(config.data.path) / "conditioning" / "0.png", control)
    out = tmp_path / "grid.png"
    argv = ["sample", "--workdir", str(workdir), "--prompt", "dark box 0", "--steps", "2"]
    assert main([*argv, "--control-image", str(control), "--out", str(out)]) == 0
    text = read_png_text(out)
    assert text["control_image"] == str(control) and "controlnet" not in text
    assert main([*argv, "--out", str(tmp_path / "none.png")]) == 2
    assert "holds a ControlNet run: give its --control-image" in capsys.readouterr().err


def test_a_run_starts_from_a_pretrained_controlnet(trained, tmp_path):
    workdir, config = trained
    exported = workdir / EXPORT_DIR
    settings = [f"pretrained={config.pretrained}", f"data.path={config.data.path}"]
    start = load_config("sd15_controlnet:tiny", [*settings, f"controlnet.pretrained={exported}"])
    task = make_task(start)
    model = task.build_model(nnx.Rngs(0))
    task.initialize(model, tmp_path / "run")
    want = state_dict(unet_table(dict(model.controlnet.architecture)), from_diffusers(exported))
    got = state_dict(unet_table(dict(model.controlnet.architecture)), model.controlnet)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    unet = f"controlnet.pretrained={config.pretrained}/unet"
    task = make_task(load_config("sd15_controlnet:tiny", [*settings, unet]))
    with pytest.raises(UserError, match="/unet' holds a UNet; accepted: a diffusers ControlNet"):
        task.initialize(task.build_model(nnx.Rngs(0)), tmp_path / "other")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.conditioning_column=", "gives no conditioning images; accepted: data with one"),
        ("controlnet.channel_order=rbg", "controlnet.channel_order='rbg'; accepted: rgb, bgr"),
        (
            "controlnet.conditioning_embedding_out_channels=8,16,32",
            "has 3 stages: the conditioning images at 4x the latents' size; accepted: 2 stages",
        ),
        ("train.cache_encodings=True", "train.cache_encodings keeps no conditioning images"),
    ],
)
def test_bad_controlnet_settings_are_one_line_errors(tmp_path, override, message):
    config = controlnet_config(tmp_path, override)
    with pytest.raises(UserError, match=message):
        make_task(config)
