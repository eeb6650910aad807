"""Bad input to the pipelines: one-line errors naming the value and what is accepted, raised
before anything is compiled; a prompt cut at the tokenizer's limit warns with the words dropped."""

import functools

import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.pipelines.stable_diffusion import StableDiffusion

IMAGE = np.zeros((16, 16, 3), np.float32)
MASK = np.ones((16, 16), np.float32)


@functools.cache
def _pipe(folder) -> StableDiffusion:
    return StableDiffusion.from_pretrained(folder)


@pytest.fixture
def pipe(sd_folders):
    return _pipe(sd_folders["epsilon"])


def _raises(match: str):
    return pytest.raises(UserError, match=match)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p("a", height=17, width=16), r"17x16; .*multiples of 2"),
        (lambda p: p("a", height=0), r"height=0"),
        (lambda p: p.img2img("a", np.zeros((15, 16, 3))), r"image of size 15x16"),
        (lambda p: p.inpaint("a", IMAGE, np.ones((8, 8))), r"mask of size 8x8 for an image"),
        (lambda p: p.img2img("a", IMAGE, strength=0.0), r"strength=0.0 must be in \(0, 1\]"),
        (lambda p: p.img2img("a", IMAGE, strength=1.5), r"strength=1.5 must be in \(0, 1\]"),
        (lambda p: p.inpaint("a", IMAGE, MASK, strength=-1), r"strength=-1 must be in"),
        (
            lambda p: p.img2img("a", IMAGE, strength=0.1, num_inference_steps=5),
            r"strength=0.1 with num_inference_steps=5 leaves no step",
        ),
        (
            lambda p: p(["a", "b"], negative_prompt=["c"]),
            r"negative_prompt has 1 entries for 2 prompts",
        ),
        (lambda p: p("a", guidance_scale=-1.0), r"guidance_scale=-1.0 must be >= 0"),
        (lambda p: p("a", prompt_2="b"), r"StableDiffusion does not take 'prompt_2'; accepted: "),
        (lambda p: p("a", clip_skip=3), r"clip_skip=3; accepted: 0 to 2 \(StableDiffusion with"),
        (lambda p: p("a", clip_skip=-1), r"clip_skip=-1 must be an integer >= 0"),
        (lambda p: p("a", denoising_end=1.0), r"denoising_end=1.0 must be a number in \(0, 1\)"),
        (lambda p: p("a", denoising_start=0.5), r"denoising_start is img2img's: the run starts"),
        (
            lambda p: p.img2img("a", IMAGE, denoising_start=0.5, denoising_end=0.4),
            r"denoising_start=0.5 must be below denoising_end=0.4",
        ),
        (lambda p: p.inpaint("a", IMAGE, MASK, denoising_end=0.5), r"denoising_end: inpainting"),
        (
            lambda p: p("a", num_inference_steps=2, denoising_end=0.01),
            r"denoising_end=0.01 with num_inference_steps=2 leaves no step to run",
        ),
        (
            lambda p: p.img2img(["a", "b", "c"], np.zeros((2, 8, 8, 4)), denoising_start=0.5),
            r"2 latent images for 3 prompts x 1 images; accepted: 1 or 3",
        ),
        (
            lambda p: p("a", sampler="unipc", denoising_end=0.5),
            r"denoising_end with sampler 'unipc', whose last steps depend on where the run",
        ),
        (
            lambda p: p(
                "a",
                sampler="dpmpp_2m",
                sampler_options={"lower_order_final": True},
                denoising_end=0.5,
            ),
            r"denoising_end with lower_order_final=True",
        ),
        (
            lambda p: p.img2img("a", np.zeros((8, 8, 4)), sampler="heun", denoising_start=0.5),
            r"denoising_start with sampler 'heun'; accepted: samplers of one model evaluation",
        ),
        (
            lambda p: p.img2img("a", np.zeros((16, 16, 4), np.uint8)),
            r"image of shape \(1, 16, 16, 4\)",
        ),
        (lambda p: p("a", guidance_rescale=2.0), r"guidance_rescale=2.0 must be in \[0, 1\]"),
        (lambda p: p("a", num_inference_steps=0), r"num_inference_steps=0"),
        (lambda p: p("a", num_images_per_prompt=0), r"num_images_per_prompt=0"),
        (lambda p: p("a", sampler="nope"), r"unknown sampler 'nope'; accepted: .*ddim"),
        (lambda p: p("a", sampler_options={"order": 3}), r"does not take option 'order'"),
        (lambda p: p("a", sigma_schedule="cosine"), r"unknown sigma_schedule 'cosine'"),
        (
            lambda p: p("a", sigma_schedule_options={"rho": 3.0}),
            r"sigma_schedule_options: a scheduler config's sigma schedules take none",
        ),
        (lambda p: p("a", output_type="pt"), r"output_type='pt'; accepted: np, pil, latent"),
        (
            lambda p: p.decode(np.zeros((1, 8, 8, 4)), output_type="latent"),
            r"decode gives images; output_type 'latent' is not one",
        ),
        (
            lambda p: p("a", sampler_options={"eta": [0.5]}),
            r"sampler option eta=\[0.5\]: the pipelines take numbers and strings",
        ),
        (lambda p: p("a", seed=-1), r"seed=-1 must be an integer in \[0, 2\*\*32\)"),
        (lambda p: p("a", lora_scale=float("nan")), r"lora_scale=nan must be a finite number"),
        (lambda p: p("a", lora_scale=True), r"lora_scale=True must be a finite number"),
        (
            lambda p: p("a", first_index=-1),
            r"first_index=-1 must be an integer in \[0, 2147483647\]",
        ),
        (
            lambda p: p(["a", "b"], first_index=2**31 - 1),
            r"first_index=2147483647 must be an integer in \[0, 2147483646\] for 2 items",
        ),
        (lambda p: p("a", first_index=True), r"first_index=True must be an integer"),
        (lambda p: p("a", output_type="pt"), r"output_type='pt'; accepted: np, pil"),
        (lambda p: p("a", latents=np.zeros((1, 8, 8, 3))), r"latents of shape \(1, 8, 8, 3\)"),
        (lambda p: p([]), r"no prompt given"),
        (lambda p: p(["a", 3]), r"prompt 3 is not a string"),
        (lambda p: p.img2img("a", np.full((16, 16, 3), 2.0)), r"image values in \[2.0, 2.0\]"),
        (lambda p: p.img2img("a", np.zeros((16, 16))), r"image of shape \(16, 16\)"),
        (lambda p: p.img2img(["a", "b", "c"], np.zeros((2, 16, 16, 3))), r"2 images for 3"),
    ],
)
def test_bad_input_is_a_one_line_error(pipe, call, match):
    with _raises(match) as error:
        call(pipe)
    assert "\n" not in str(error.value)


def test_long_prompt_warns_naming_the_words_dropped(pipe):
    """The tiny tokenizer keeps 16 tokens (one per letter, with start and end)."""
    prompt = "a red cat on a mat by the old dog"
    with pytest.warns(UserWarning, match=r"these words were dropped: 'the old dog'") as record:
        images = pipe(prompt, num_inference_steps=1)
    assert len(record) == 1 and images.shape == (1, 16, 16, 3)


def test_pil_output_and_images_per_prompt(pipe):
    pictures = pipe(["a", "b"], num_inference_steps=1, num_images_per_prompt=2, output_type="pil")
    arrays = pipe(["a", "b"], num_inference_steps=1, num_images_per_prompt=2)
    assert len(pictures) == 4 and pictures[0].size == (16, 16) and pictures[0].mode == "RGB"
    np.testing.assert_array_equal(
        np.stack([np.asarray(p) for p in pictures]), np.round(arrays * 255).astype(np.uint8)
    )


def test_one_mask_per_prompt_goes_with_each_of_its_images(pipe):
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, :8] = 1.0  # the first prompt repaints the top half, the second nothing
    image = np.random.RandomState(0).rand(16, 16, 3).astype(np.float32)
    out = pipe.inpaint(["a", "b"], image, masks, num_inference_steps=2, num_images_per_prompt=2)
    assert out.shape == (4, 16, 16, 3)
    assert np.abs(out[2] - out[3]).max() < 1e-5  # nothing repainted: the same known image
    assert np.abs(out[0] - out[1]).max() > 0.05  # repainted with each image's own noise


def test_a_nine_channel_unet_only_inpaints(inpainting_folders):
    pipe = _pipe(inpainting_folders["epsilon"])
    with _raises(r"text-to-image needs a network with 4 input channels; this one has 9"):
        pipe("a")
    with _raises(r"img2img needs a network with 4 input channels"):
        pipe.img2img("a", IMAGE)


def test_unsupported_scheduler_config_is_refused(sd_folders, tmp_path):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(sd_folders["epsilon"], folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "rescale_betas_zero_snr": True})
    )
    with _raises(r"rescale_betas_zero_snr=True is not supported; accepted: False"):
        StableDiffusion.from_pretrained(folder)
