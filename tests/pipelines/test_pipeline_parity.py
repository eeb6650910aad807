"""StableDiffusion against diffusers' StableDiffusionPipeline, StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline on the same tiny random weights, prompts and noise, for every
sampler the issue names, eps and v prediction: the final latents (`output_type="latent"`) within
3e-4 of their scale and the images within 1e-3 (max abs, [0, 1] scale); measured at most 5.0e-5
and 7.0e-5. Every reference image varies (std > 0.1: the weights are far from their initial
values, see `reference_models`), and in every case a deliberately wrong run (5% more initial
noise, or guidance x 1.1) misses the reference by more than 10x both tolerances (measured at
least 97x and 45x).

Each side samples once per case, to latents that it decodes with its own VAE: diffusers with
`vae.decode` and its image processor, as its pipelines do; jaxdiff with the pipeline's `decode`,
which gives what its image output gives (checked once).

diffusers draws the noise it adds to the image with `randn_tensor`; the tests hand it the noise
that jaxdiff gets as `latents`. Two diffusers schedulers mishandle a run that starts part-way
down the schedule (img2img with strength < 1): `PNDMScheduler` ignores the begin index and
evaluates the model one timestep off after its first step, and `LMSDiscreteScheduler` weights
its first derivative with the coefficient of a full-order step. Their img2img comparison runs
at strength 1, where both start at the top.

`PNDMScheduler` with a v-prediction model combines the raw network outputs (v) of past steps and
converts the combination to eps with the current sample; PLMS (Liu et al. 2022) and jaxdiff
combine eps. The two agree for eps models only, so PNDM is compared on eps models.
"""

import types

import numpy as np
import pytest
import torch
from sd_parity import (
    ALTERNATING,
    CASES,
    FLIPPED,
    PROMPTS,
    assert_misses,
    assert_parity,
    common,
    diffusers_run,
    input_images,
    jaxdiff_options,
    jaxdiff_pipeline,
    jaxdiff_run,
    more_noise,
    noise,
    patched_noise,
    reference,
    torch_images,
)


@pytest.mark.parametrize(("case", "prediction"), CASES)
def test_text_to_image_matches_diffusers(sd_folders, case, prediction):
    folder = sd_folders[prediction]
    pipe = reference("StableDiffusionPipeline", folder, case, prediction)
    want = diffusers_run(pipe, PROMPTS, latents=noise(), **common())
    options = dict(jaxdiff_options(case), **common())
    assert_parity(want, folder, "__call__", PROMPTS, wrong=more_noise(), **options)


def test_image_output_is_the_decoded_latent_output(sd_folders):
    folder = sd_folders["epsilon"]
    options = dict(jaxdiff_options("ddim"), **common())
    _, images = jaxdiff_run(folder, "__call__", PROMPTS, **options)
    np.testing.assert_allclose(
        jaxdiff_pipeline(folder)(PROMPTS, **options), images, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    ("case", "prediction", "guidance", "rescale", "clip_skip"),
    [
        ("ddim", "v_prediction", 5.0, 0.7, 0),
        ("euler", "epsilon", 5.0, 0.5, 1),
        ("unipc", "epsilon", 1.0, 0, 1),
    ],
)
def test_guidance_rescale_clip_skip_and_no_guidance_match_diffusers(
    sd_folders, case, prediction, guidance, rescale, clip_skip
):
    """Guidance rescale acts on the network output as in diffusers; guidance <= 1 runs the
    conditional model alone (the negative prompt is ignored), as diffusers does; `clip_skip`
    reads the prompts (not the negative ones) a layer earlier, as diffusers does. Guidance x 1.1
    misses (without guidance, 5% more initial noise: guidance > 1 would be another program), and
    so does the run without the skip."""
    folder = sd_folders[prediction]
    pipe = reference("StableDiffusionPipeline", folder, case, prediction)
    settings = dict(common(), guidance_scale=guidance, guidance_rescale=rescale)
    if clip_skip:
        settings["clip_skip"] = clip_skip
        # diffusers reads `text_encoder.text_model.final_layer_norm`, which transformers 5's
        # CLIPTextModel (its modules one level up) lacks: point it at the model's own norm.
        encoder = pipe.text_encoder
        encoder.text_model = types.SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    want = diffusers_run(pipe, PROMPTS, latents=noise(), **settings)
    wrong = dict(guidance_scale=1.1 * guidance) if guidance > 1 else more_noise()
    options = dict(jaxdiff_options(case), **settings)
    assert_parity(want, folder, "__call__", PROMPTS, wrong=wrong, **options)
    if clip_skip:
        options["clip_skip"] = 0
        assert_misses(jaxdiff_run(folder, "__call__", PROMPTS, **options), want)


@pytest.mark.parametrize(("case", "prediction"), ALTERNATING)
def test_img2img_matches_diffusers(sd_folders, monkeypatch, case, prediction):
    folder = sd_folders[prediction]
    strength = 1.0 if case in ("pndm", "lms") else 0.6
    pipe = reference("StableDiffusionImg2ImgPipeline", folder, case, prediction)
    patched_noise(monkeypatch, "stable_diffusion.pipeline_stable_diffusion_img2img")
    images, _ = input_images()
    want = diffusers_run(pipe, PROMPTS, image=torch_images(images), strength=strength, **common())
    options = dict(jaxdiff_options(case), strength=strength, **common())
    assert_parity(want, folder, "img2img", PROMPTS, images, wrong=more_noise(), **options)


def _inpaint_case(folder, monkeypatch, case, prediction, strength):
    pipe = reference("StableDiffusionInpaintPipeline", folder, case, prediction)
    patched_noise(monkeypatch, "stable_diffusion.pipeline_stable_diffusion_inpaint")
    images, masks = input_images()
    want = diffusers_run(
        pipe,
        PROMPTS,
        image=torch_images(images),
        mask_image=torch.from_numpy(masks)[:, None],
        strength=strength,
        height=16,
        width=16,
        **common(),
    )
    options = dict(jaxdiff_options(case), strength=strength, **common())
    assert_parity(want, folder, "inpaint", PROMPTS, images, masks, wrong=more_noise(), **options)


@pytest.mark.parametrize(("case", "prediction"), FLIPPED)
def test_inpaint_standard_unet_matches_diffusers(sd_folders, monkeypatch, case, prediction):
    """A 4-channel UNet: the known region re-imposed at every step; strength 1 (diffusers'
    default) starts from pure noise."""
    _inpaint_case(sd_folders[prediction], monkeypatch, case, prediction, 1.0)


@pytest.mark.parametrize(
    ("case", "prediction"), [("dpmpp_2m", "epsilon"), ("heun", "v_prediction")]
)
def test_inpaint_from_the_noised_image_matches_diffusers(sd_folders, monkeypatch, case, prediction):
    """strength < 1 starts from the noised image; the known region stays the image's."""
    _inpaint_case(sd_folders[prediction], monkeypatch, case, prediction, 0.5)


@pytest.mark.parametrize(
    ("case", "prediction"),
    [
        ("ddim", "v_prediction"),
        ("euler", "epsilon"),
        ("dpmpp_2m_karras", "v_prediction"),
        ("unipc", "epsilon"),
    ],
)
def test_inpaint_nine_channel_unet_matches_diffusers(
    inpainting_folders, monkeypatch, case, prediction
):
    """A 9-channel inpainting UNet: mask and masked-image latents as extra input channels."""
    _inpaint_case(inpainting_folders[prediction], monkeypatch, case, prediction, 1.0)


def test_inpaint_nine_channel_from_the_noised_image_matches_diffusers(
    inpainting_folders, monkeypatch
):
    _inpaint_case(inpainting_folders["epsilon"], monkeypatch, "euler", "epsilon", 0.7)
