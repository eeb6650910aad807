"""jaxdiff's own text-to-image pipeline: each image is a function of its seed and index alone,
the same on 1 or 8 devices, in one batch or several calls, with a stochastic sampler."""

import functools
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.configuration import load_config
from jaxdiff.errors import UserError
from jaxdiff.models import ControlNet
from jaxdiff.pipelines import TextToImagePipeline
from jaxdiff.train.tasks import make_task

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes_t2i.py"
TOLERANCE = 1e-5  # float differences of batched vs unbatched convolutions on CPU


@functools.cache
def _task_and_model():
    config = load_config(f"{CONFIG}:tiny", ["vae_workdir=", "data.image_size=16"])
    task = make_task(config)
    return task, task.build_model(nnx.Rngs(0))


def _pipeline(devices: int) -> TextToImagePipeline:
    task, model = _task_and_model()
    return TextToImagePipeline(
        model, task.tokenizer, task.diffusion, 16, jax.local_devices()[:devices]
    )


def test_an_image_depends_on_its_seed_and_index_alone():
    prompts = ["a red circle in the center", "a blue square in the top left corner"] * 3
    settings = dict(
        num_inference_steps=3,
        sampler="euler_ancestral",
        guidance_scale=2.0,
        seed=4,
        output_type="latent",
    )
    one_device, eight_devices = _pipeline(1), _pipeline(8)
    task, _ = _task_and_model()
    whole = eight_devices(prompts, **settings)  # [6, h, w, c]
    assert whole.shape == (6, *task.latent_shape)
    parts = [
        one_device(prompts[:1], **settings),
        eight_devices(prompts[1:5], **settings, first_index=1),
        one_device(prompts[5:], **settings, first_index=5),
    ]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=TOLERANCE)
    # The same prompt at two indices: two different images.
    assert np.abs(np.asarray(whole[0] - whole[2])).max() > 0.05
    pictures = eight_devices(prompts[:3], **{**settings, "output_type": "np"})
    assert pictures.shape == (3, 16, 16, 3) and pictures.dtype == np.float32
    np.testing.assert_allclose(eight_devices.decode(whole[:3]), pictures, atol=TOLERANCE)


def test_a_bad_first_index_is_a_one_line_error():
    with pytest.raises(UserError, match=r"first_index=-2 must be an integer in \[0, 2147483647\]"):
        _pipeline(8)(["a red circle in the center"], first_index=-2)


def test_guidance_zero_samples_the_unconditional_branch():
    """jaxdiff's own models guide at every scale but 1: at 0 a prompt's image is its negative
    prompt's image at scale 1 (the conditional model alone)."""
    pipe = _pipeline(8)
    settings = dict(num_inference_steps=3, seed=7, output_type="latent")
    red, blue = "a red circle in the center", "a blue square in the top left corner"
    unconditional = pipe([red], negative_prompt=blue, guidance_scale=0.0, **settings)
    conditional = pipe([blue], guidance_scale=1.0, **settings)
    # One batched pass over both prompts against a pass over one: float differences (1e-4).
    np.testing.assert_allclose(unconditional, conditional, rtol=0, atol=1e-3)
    assert np.abs(pipe([red], guidance_scale=1.0, **settings) - conditional).max() > 0.05


def test_a_controlnet_steers_the_model_the_same_on_one_and_eight_devices():
    """A ControlNet copied from the model's UNet (pixel space: control images at the latents'
    size), its zero convolutions moved: its images are the same on 1 or 8 devices and depend on
    the control image."""
    task, model = _task_and_model()
    controlnet = ControlNet.from_unet(
        model.unet, conditioning_embedding_out_channels=(8,), rngs=nnx.Rngs(1)
    )
    graphdef, state = nnx.split(controlnet)

    def moved_zero_convolutions(path, value):
        name = jax.tree_util.keystr(path)
        zero = "controlnet_down_blocks" in name or "controlnet_mid_block" in name
        return value + 0.01 if zero or "controlnet_cond_embedding']['conv_out" in name else value

    moved = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(moved_zero_convolutions, state))
    prompts = ["a red circle in the center", "a blue square in the top left corner"]
    control = np.random.RandomState(0).rand(2, 16, 16, 3).astype(np.float32)
    settings = dict(num_inference_steps=2, sampler="heun", seed=3, output_type="latent")
    runs = [
        TextToImagePipeline(model, task.tokenizer, task.diffusion, 16, devices, controlnet=moved)(
            prompts, control_image=image, **settings
        )
        for devices, image in (
            (jax.local_devices()[:1], control),
            (jax.local_devices(), control),
            (jax.local_devices(), control[::-1]),
        )
    ]
    # The random networks' latents reach 100: float differences of 5e-5 of their scale.
    scale = np.abs(runs[1]).max()
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-4 * scale)
    assert np.abs(runs[2] - runs[1]).max() > 0.05
