"""LoRA training (`configs/sd15_lora.py:tiny`, LoCon and text-encoder adapters, dropout 0.1) on
the tiny Stable Diffusion model: only the adapters train and only they have optimizer state;
the file the run writes is its adapters, and diffusers' `load_lora_weights` + peft (pinned)
make jaxdiff's images from it.

The run trains at a learning rate far above the config's so that two steps move the adapters
far: loading the file moves diffusers' images by more than 100x the tolerance, and jaxdiff at
`lora_scale=0.9` misses diffusers' images by more than 10x both tolerances.
"""

import math

import jax
import numpy as np
import pytest
from flax import nnx
from lora_runs import LATENT_TOLERANCE, TOLERANCE, diffusers_run, errors, jaxdiff_run
from tiny_finetune import finetune_config

from jaxdiff.configuration import load_config
from jaxdiff.convert.lora_files import WEIGHT_NAME
from jaxdiff.convert.pipeline_components import load_pipeline_components
from jaxdiff.errors import UserError
from jaxdiff.models import lora
from jaxdiff.parallel import check_rules, make_mesh
from jaxdiff.pipelines.stable_diffusion import StableDiffusion
from jaxdiff.train.optim import make_optimizer
from jaxdiff.train.state import build_layout
from jaxdiff.train.tasks import load_trained, make_task
from jaxdiff.train.trainer import train

TARGETS = (
    "lora.unet_targets=to_q,to_k,to_v,to_out.0,ff.net.2,conv1",  # conv1: LoCon on 3x3 convs
    "lora.text_encoder_targets=q_proj,fc1",
    "lora.dropout=0.1",
)


def lora_config(root, *overrides: str):
    """The tiny LoRA config on the tiny model folder and images that `finetune_config` makes."""
    folders = finetune_config(root)
    paths = [f"pretrained={folders.pretrained}", f"data.path={folders.data.path}"]
    return load_config("sd15_lora:tiny", [*paths, *overrides])


# remat as the full config has it: each UNet block in a jax.checkpoint around the frozen base
OVERRIDES = (
    "train.steps=2",
    "train.learning_rate=0.05",
    "train.preview_every=0",
    "train.remat=True",
    *TARGETS,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, config) of two steps at learning rate 0.05."""
    root = tmp_path_factory.mktemp("lora")
    config = lora_config(root, *OVERRIDES)
    train(config, root / "run", progress=False)
    return root / "run", config


def test_a_resumed_run_ends_with_the_uninterrupted_weights(trained, tmp_path):
    """One step, then a rerun to two: the base, the adapters and the LoRA file (rewritten at the
    rerun's last step) are the uninterrupted run's, bit for bit. A finished run whose file is
    gone writes it again."""
    workdir, config = trained
    resumed = tmp_path / "run"
    written = []  # the LoRA file after each run: each run writes it at its last step
    for steps in (1, 2):
        folders = [f"pretrained={config.pretrained}", f"data.path={config.data.path}"]
        settings = [*folders, *OVERRIDES, f"train.steps={steps}"]
        train(load_config("sd15_lora:tiny", settings), resumed, progress=False)
        written.append((resumed / WEIGHT_NAME).read_bytes())
    got = jax.tree.leaves(nnx.state(load_trained(resumed, use_ema=False)[1]))
    want = jax.tree.leaves(nnx.state(load_trained(workdir, use_ema=False)[1]))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # the file holds the EMA adapters
    assert written[1] == (workdir / WEIGHT_NAME).read_bytes() != written[0]
    (resumed / WEIGHT_NAME).unlink()  # as if a crash cut the export short
    train(load_config("sd15_lora:tiny", settings), resumed, progress=False)
    assert (resumed / WEIGHT_NAME).read_bytes() == written[1]


def test_only_the_adapters_train_and_hold_optimizer_state(trained):
    workdir, config = trained
    _, model = load_trained(workdir, use_ema=False)
    adapters = nnx.state(model, nnx.LoRAParam)
    ups = [a for path, a in jax.tree_util.tree_leaves_with_path(adapters) if "up" in str(path)]
    assert len(ups) > 0 and all(np.abs(np.asarray(up)).max() > 1e-3 for up in ups)
    for network in (model.unet, model.text_encoder):
        assert any(True for _ in lora.adapted_layers(network))
        lora.remove_adapters(network)
    pretrained = load_pipeline_components(config.pretrained)
    for name, network, original in (
        ("unet", model.unet, pretrained.unet),
        ("vae", model.autoencoder, pretrained.vae),
        ("text_encoder", model.text_encoder, pretrained.text_encoder),
    ):
        got = jax.tree.leaves(nnx.state(network, nnx.Param))
        want = jax.tree.leaves(nnx.state(original, nnx.Param))
        assert len(got) == len(want), name
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} moved")
    # Adam's two moments of each adapter weight, and nothing of the frozen base.
    task = make_task(config)
    mesh, rules = make_mesh(config.mesh), check_rules(config.sharding_rules)
    layout = build_layout(task, make_optimizer(config.train), mesh, rules)
    optimizer_sizes = sum(math.prod(a.shape) for a in jax.tree.leaves(layout.abstract[1]))
    lora_sizes = sum(math.prod(a.shape) for a in jax.tree.leaves(layout.abstract_ema))
    assert 2 * lora_sizes <= optimizer_sizes < 2 * lora_sizes + 16  # + step counters


def test_the_saved_lora_makes_the_trained_images_in_diffusers(trained):
    import diffusers

    workdir, config = trained
    task, model = load_trained(workdir)
    in_run = jaxdiff_run(task.pipeline(model))
    pipe = StableDiffusion.from_pretrained(config.pretrained)
    pipe.load_lora_weights(workdir)  # its pytorch_lora_weights.safetensors
    from_file = jaxdiff_run(pipe)
    for got, want in zip(from_file, in_run, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        config.pretrained, safety_checker=None
    )
    reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    plain = diffusers_run(reference)
    reference.load_lora_weights(workdir / WEIGHT_NAME)
    want = diffusers_run(reference)
    assert np.abs(want[1] - plain[1]).max() > 100 * TOLERANCE
    image_error, latent_error = errors(from_file, want)
    assert image_error < TOLERANCE and latent_error < LATENT_TOLERANCE, (image_error, latent_error)
    image_error, latent_error = errors(jaxdiff_run(pipe, lora_scale=0.9), want)
    assert image_error > 10 * TOLERANCE and latent_error > 10 * LATENT_TOLERANCE


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.rank=0", "lora.rank=0; accepted: an integer >= 1"),
        ("lora.alpha=-1.0", "lora.alpha=-1.0; accepted: a number > 0"),
        ("lora.dropout=1.0", r"lora.dropout=1.0; accepted: a number in \[0, 1\)"),
        ("lora.save_format=ckpt", "lora.save_format"),
        ("lora.unet_targets=to_z", "lora.unet_targets=\\('to_z',\\) matches no Linear or Conv"),
        ("lora.unet_targets=()", "lora.unet_targets and lora.text_encoder_targets are both empty"),
    ],
)
def test_bad_lora_settings_are_one_line_errors(tmp_path, override, message):
    config = lora_config(tmp_path, override)
    with pytest.raises(UserError, match=message):
        train(config, tmp_path / "run", progress=False)


def test_a_text_encoder_lora_cannot_train_on_cached_encodings(tmp_path):
    config = lora_config(tmp_path, "lora.text_encoder_targets=q_proj", "train.cache_encodings=True")
    with pytest.raises(UserError, match=r"train\.cache_encodings keeps the text encoder's outputs"):
        make_task(config)
