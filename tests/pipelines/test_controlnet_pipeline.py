"""StableDiffusion with ControlNets beyond diffusers parity (test_controlnet_parity.py): the same
images on one device and on eight, control settings that do not recompile, inputs that mean the
same thing giving the same images, and bad input as one-line errors raised before sampling."""

import functools

import jax
import numpy as np
import pytest
from compile_events import compile_events
from flax import nnx
from PIL import Image

from jaxdiff.convert import from_diffusers
from jaxdiff.errors import UserError
from jaxdiff.models import ControlNet
from jaxdiff.models.abstract import eval_shape
from jaxdiff.pipelines.stable_diffusion import StableDiffusion

PROMPTS = ["a red cat", "sky"]
FAST = dict(num_inference_steps=2, sampler="dpmpp_2m", guidance_scale=4.0)
TOLERANCE = 2e-5  # images on 1 vs 8 devices: max abs, [0, 1] scale


@functools.cache
def _pipe(folder, controlnets: tuple, devices: int = 8) -> StableDiffusion:
    return StableDiffusion.from_pretrained(
        folder, controlnet=list(controlnets), devices=jax.devices()[:devices]
    )


def _control(seed: int = 0, count: int = 1) -> np.ndarray:
    """uint8 control images [count, 16, 16, 3]."""
    return np.random.RandomState(seed).randint(0, 256, (count, 16, 16, 3), np.uint8)


@pytest.fixture
def pipe(sd_folders, controlnet_folders):
    """The tiny model with both ControlNets."""
    return _pipe(sd_folders["epsilon"], controlnet_folders)


def test_same_images_on_one_and_eight_devices(sd_folders, controlnet_folders):
    folder, nets = sd_folders["epsilon"], controlnet_folders
    settings = dict(FAST, seed=3, control_guidance_end=[1.0, 0.5])  # the other tests' shapes
    control = [_control(1)[0], _control(2, count=2)]
    one = _pipe(folder, nets, 1)(PROMPTS, control_image=control, **settings)
    eight = _pipe(folder, nets)(PROMPTS, control_image=control, **settings)
    assert eight.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(one, eight, rtol=0, atol=TOLERANCE)


def test_control_settings_do_not_recompile(pipe):
    first = pipe(PROMPTS, control_image=[_control(1)[0]] * 2, **FAST)
    with compile_events() as compiles:
        second = pipe(
            PROMPTS,
            control_image=[_control(2)[0], _control(3)[0]],
            controlnet_conditioning_scale=[0.3, 1.5],
            control_guidance_start=[0.5, 0.0],
            control_guidance_end=[1.0, 0.5],
            guess_mode=True,
            **FAST,
        )
    assert compiles == []
    assert np.abs(first - second).max() > 0.05


def test_equal_inputs_give_equal_images(sd_folders, controlnet_folders, pipe):
    """PIL images and uint8 arrays; one image for every prompt and that image per prompt; the
    control image's size as the default size; scale 0 and the model without ControlNets."""
    image = _control(4)[0]
    as_array = pipe(PROMPTS, control_image=[image, image], **FAST)
    as_pil = pipe(PROMPTS, control_image=[Image.fromarray(image)] * 2, **FAST)
    per_prompt = pipe(PROMPTS, control_image=[np.stack([image] * 2)] * 2, **FAST)
    sized = pipe(PROMPTS, control_image=[image, image], height=16, width=16, **FAST)
    np.testing.assert_array_equal(as_pil, as_array)
    np.testing.assert_array_equal(per_prompt, as_array)
    np.testing.assert_array_equal(sized, as_array)
    off = pipe(PROMPTS, control_image=[image, image], controlnet_conditioning_scale=0, **FAST)
    plain = _pipe(sd_folders["epsilon"], ())(PROMPTS, **FAST)
    np.testing.assert_allclose(off, plain, rtol=0, atol=1e-6)
    assert np.abs(as_array - plain).max() > 0.05


IMAGE = np.zeros((16, 16, 3), np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p("a", **FAST), r"2 ControlNets needs control_image="),
        (lambda p: p("a", control_image=IMAGE), r"a list of 2 entries .*got ndarray"),
        (lambda p: p("a", control_image=[IMAGE]), r"a list of 2 entries .*got 1 entries"),
        (
            lambda p: p("a", control_image=[IMAGE, np.zeros((8, 16, 3))]),
            r"control_image\[1\] of size 8x16 for images of size 16x16; .*never resized",
        ),
        (
            lambda p: p("a", control_image=[IMAGE, IMAGE], height=32),
            r"control_image\[0\] of size 16x16 for images of size 32x16",
        ),
        (
            lambda p: p("a", control_image=[IMAGE, np.zeros((16, 16, 4))]),
            r"control_image\[1\] of shape \(1, 16, 16, 4\); accepted: \[H, W, 3\]",
        ),
        (
            lambda p: p("a", control_image=[IMAGE, IMAGE + 2]),
            r"control_image\[1\] values in \[2.0, 2.0\]; accepted: \[0, 1\]",
        ),
        (
            lambda p: p(["a", "b", "c"], control_image=[IMAGE, np.stack([IMAGE] * 2)]),
            r"control_image\[1\] has 2 images for 3 prompts",
        ),
        (
            lambda p: p("a", control_image=[IMAGE] * 2, controlnet_conditioning_scale=[1, 2, 3]),
            r"controlnet_conditioning_scale has 3 values for 2 ControlNets",
        ),
        (
            lambda p: p("a", control_image=[IMAGE] * 2, controlnet_conditioning_scale=-0.5),
            r"controlnet_conditioning_scale=-0.5; accepted: numbers >= 0",
        ),
        (
            lambda p: p("a", control_image=[IMAGE] * 2, controlnet_conditioning_scale="1"),
            r"controlnet_conditioning_scale='1'; accepted: finite numbers",
        ),
        (
            lambda p: p(
                "a", control_image=[IMAGE] * 2, control_guidance_start=0.6, control_guidance_end=0.6
            ),
            r"control_guidance_start=0.6, control_guidance_end=0.6; accepted: 0 <= start < end",
        ),
        (
            lambda p: p("a", control_image=[IMAGE] * 2, control_guidance_end=[1.0, 1.2]),
            r"control_guidance_end=1.2; accepted: 0 <= start < end <= 1",
        ),
        (
            lambda p: p("a", control_image=[IMAGE] * 2, guess_mode=1),
            r"guess_mode=1; accepted: True or False",
        ),
    ],
)
def test_bad_control_arguments(pipe, call, match):
    with pytest.raises(UserError, match=match):
        call(pipe)


def test_control_arguments_need_a_controlnet(sd_folders):
    with pytest.raises(UserError, match="control_image needs a ControlNet; accepted: a pipeline"):
        _pipe(sd_folders["epsilon"], ())("a", control_image=IMAGE)


def _other(controlnet: ControlNet, **changes) -> ControlNet:
    arguments = {**dict(controlnet.architecture), **changes}
    return eval_shape(lambda: ControlNet(**arguments, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(cross_attention_dim=48), r"controlnet has cross_attention_dim=48, the UNet needs 32"),
        (
            dict(block_out_channels=(32, 32)),
            r"controlnet has block_out_channels=\(32, 32\), the UNet needs \(32, 64\)",
        ),
        (
            dict(conditioning_embedding_out_channels=(8, 8, 16)),
            r"controlnet reads control images at 4x the latents' size, the VAE makes images 2x",
        ),
    ],
)
def test_a_controlnet_for_another_model(sd_folders, controlnet_folders, changes, match):
    other = _other(from_diffusers(controlnet_folders[0]), **changes)
    with pytest.raises(UserError, match=match):
        StableDiffusion.from_pretrained(sd_folders["epsilon"], controlnet=other)


def test_a_controlnet_that_is_not_one(sd_folders, controlnet_folders):
    folder = sd_folders["epsilon"]
    with pytest.raises(UserError, match=r"controlnet\[1\] is a UNet; accepted: a ControlNet"):
        StableDiffusion.from_pretrained(folder, controlnet=[controlnet_folders[0], folder / "unet"])
