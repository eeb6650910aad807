"""StableDiffusion against diffusers' StableDiffusionPipeline, StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline on the same tiny random weights, prompts and noise, for every
sampler the issue names, eps and v prediction: the final latents (`output_type="latent"`) within
3e-4 of their scale and the images within 1e-3 (max abs, [0, 1] scale); measured at most 3.1e-5
and 7.1e-5. Every reference image varies (std > 0.1: the weights are far from their initial
values, see `reference_models`), and in every case a deliberately wrong run (5% more initial
noise, or guidance x 1.1) misses the reference by more than 10x both tolerances (measured at
least 71x and 42x).

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

import functools

import numpy as np
import pytest
import torch
from conftest import PREDICTIONS, scheduler_config
from reference_models import assert_far_from_flat

from jaxdiff.pipelines.stable_diffusion import StableDiffusion

# case -> (jaxdiff sampler, sigma_schedule, diffusers scheduler, its extra config)
SAMPLERS = {
    "ddim": ("ddim", None, "DDIMScheduler", {}),
    "pndm": ("plms", None, "PNDMScheduler", {}),
    "euler": ("euler", None, "EulerDiscreteScheduler", {}),
    "heun": ("heun", None, "HeunDiscreteScheduler", {}),
    "lms": ("lms", None, "LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("dpmpp_2m", None, "DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": (
        "dpmpp_2m",
        "karras",
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True},
    ),
    "unipc": ("unipc", None, "UniPCMultistepScheduler", {}),
}
CASES = [
    (case, prediction)
    for case in SAMPLERS
    for prediction in PREDICTIONS
    if (case, prediction) != ("pndm", "v_prediction")
]
# img2img and inpainting wire the same loop for every sampler: each sampler is checked once there,
# the prediction types alternating between the two.
ALTERNATING = [(case, PREDICTIONS[i % 2]) for i, case in enumerate(SAMPLERS) if case != "pndm"]
FLIPPED = [(case, PREDICTIONS[1 - i % 2]) for i, case in enumerate(SAMPLERS) if case != "pndm"]
ALTERNATING.append(("pndm", "epsilon"))
FLIPPED.append(("pndm", "epsilon"))
PROMPTS = ["a red cat", "blue sky"]
NEGATIVES = ["dog", ""]
STEPS = 5
GUIDANCE = 5.0
TOLERANCE = 1e-3  # images: max abs error, [0, 1] scale
LATENT_TOLERANCE = 3e-4  # latents: max abs error over the reference's max |latent|
MISS = 10  # a deliberately wrong run misses the reference by more than MISS x each tolerance


@functools.cache
def _jaxdiff(folder) -> StableDiffusion:
    return StableDiffusion.from_pretrained(folder)


@functools.cache
def _diffusers(pipeline_class: str, folder):
    import diffusers

    return getattr(diffusers, pipeline_class).from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )


def _reference(pipeline_class: str, folder, case: str, prediction: str):
    """The diffusers pipeline with the case's scheduler built from the model's config."""
    import diffusers

    _, _, scheduler, extra = SAMPLERS[case]
    pipe = _diffusers(pipeline_class, folder)
    config = scheduler_config(prediction)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(config, **extra)
    return pipe


def _noise(batch: int = len(PROMPTS)) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # NCHW


def _jaxdiff_options(case: str) -> dict:
    sampler, schedule, _, _ = SAMPLERS[case]
    return dict(sampler=sampler, sigma_schedule=schedule, latents=_noise().permute(0, 2, 3, 1))


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images [2, 16, 16, 3] in [0, 1] and masks [2, 16, 16] (1: paint)."""
    rng = np.random.RandomState(seed)
    images = rng.rand(2, 16, 16, 3).astype(np.float32)
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, 4:12, 2:10] = 1.0
    masks[1, 8:, :] = 1.0
    return images, masks


Run = tuple[np.ndarray, np.ndarray]  # (latents [B, h, w, c], images [B, H, W, 3] in [0, 1])


def _diffusers_run(pipe, *args, **kwargs) -> Run:
    """A diffusers pipeline call's latents, and its images decoded from them as the pipeline
    decodes them."""
    latents = pipe(*args, output_type="latent", **kwargs).images  # [B, c, h, w]
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    return latents.permute(0, 2, 3, 1).numpy(), images


def _jaxdiff_run(folder, method: str, *args, **kwargs) -> Run:
    """The latents of a call of the jaxdiff pipeline's `method` ("__call__", "img2img",
    "inpaint"), and its images decoded from them."""
    pipe = _jaxdiff(folder)
    latents = getattr(pipe, method)(*args, output_type="latent", **kwargs)
    return latents, pipe.decode(latents)


def _errors(got: Run, want: Run) -> tuple[float, float]:
    """(max abs image error, max abs latent error over the reference's max |latent|)."""
    (latents, images), (want_latents, want_images) = got, want
    latent_error = np.abs(latents - want_latents).max() / np.abs(want_latents).max()
    return float(np.abs(images - want_images).max()), float(latent_error)


def _assert_close(got: Run, want: Run) -> None:
    (latents, images), (want_latents, want_images) = got, want
    assert images.shape == want_images.shape and images.dtype == np.float32
    assert latents.shape == want_latents.shape and latents.dtype == np.float32
    assert_far_from_flat(want_images)
    image_error, latent_error = _errors(got, want)
    assert image_error < TOLERANCE and latent_error < LATENT_TOLERANCE, (image_error, latent_error)


def _assert_misses(wrong: Run, want: Run) -> None:
    """A deliberately wrong run misses the reference by more than MISS x both tolerances."""
    image_error, latent_error = _errors(wrong, want)
    assert image_error > MISS * TOLERANCE, image_error
    assert latent_error > MISS * LATENT_TOLERANCE, latent_error


def _assert_parity(want: Run, folder, method: str, *args, wrong: dict, **options) -> None:
    """The jaxdiff pipeline's `method` matches `want`; the same call with the `wrong` options
    (traced: the compiled loop is reused) misses it."""
    _assert_close(_jaxdiff_run(folder, method, *args, **options), want)
    _assert_misses(_jaxdiff_run(folder, method, *args, **{**options, **wrong}), want)


def _more_noise() -> dict:
    """5% more initial noise than `_jaxdiff_options` gives."""
    return dict(latents=1.05 * _noise().permute(0, 2, 3, 1))


def _common() -> dict:
    return dict(negative_prompt=NEGATIVES, num_inference_steps=STEPS, guidance_scale=GUIDANCE)


@pytest.mark.parametrize(("case", "prediction"), CASES)
def test_text_to_image_matches_diffusers(sd_folders, case, prediction):
    folder = sd_folders[prediction]
    pipe = _reference("StableDiffusionPipeline", folder, case, prediction)
    want = _diffusers_run(pipe, PROMPTS, latents=_noise(), **_common())
    options = dict(_jaxdiff_options(case), **_common())
    _assert_parity(want, folder, "__call__", PROMPTS, wrong=_more_noise(), **options)


def test_image_output_is_the_decoded_latent_output(sd_folders):
    folder = sd_folders["epsilon"]
    options = dict(_jaxdiff_options("ddim"), **_common())
    _, images = _jaxdiff_run(folder, "__call__", PROMPTS, **options)
    np.testing.assert_allclose(_jaxdiff(folder)(PROMPTS, **options), images, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "prediction", "guidance", "rescale"),
    [
        ("ddim", "v_prediction", 5.0, 0.7),
        ("euler", "epsilon", 5.0, 0.5),
        ("unipc", "epsilon", 1.0, 0),
    ],
)
def test_guidance_rescale_and_no_guidance_match_diffusers(
    sd_folders, case, prediction, guidance, rescale
):
    """Guidance rescale acts on the network output as in diffusers; guidance <= 1 runs the
    conditional model alone (the negative prompt is ignored), as diffusers does. Guidance x 1.1
    misses (without guidance, 5% more initial noise: guidance > 1 would be another program)."""
    folder = sd_folders[prediction]
    pipe = _reference("StableDiffusionPipeline", folder, case, prediction)
    settings = dict(_common(), guidance_scale=guidance, guidance_rescale=rescale)
    want = _diffusers_run(pipe, PROMPTS, latents=_noise(), **settings)
    wrong = dict(guidance_scale=1.1 * guidance) if guidance > 1 else _more_noise()
    options = dict(_jaxdiff_options(case), **settings)
    _assert_parity(want, folder, "__call__", PROMPTS, wrong=wrong, **options)


def _patched_noise(monkeypatch, module: str) -> None:
    """diffusers' pipeline `module` draws `_noise()` as the noise it adds to the image."""
    import importlib

    target = importlib.import_module(f"diffusers.pipelines.stable_diffusion.{module}")
    monkeypatch.setattr(target, "randn_tensor", lambda *args, **kwargs: _noise())


def _torch_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)  # [B, 3, H, W] in [0, 1]


@pytest.mark.parametrize(("case", "prediction"), ALTERNATING)
def test_img2img_matches_diffusers(sd_folders, monkeypatch, case, prediction):
    folder = sd_folders[prediction]
    strength = 1.0 if case in ("pndm", "lms") else 0.6
    pipe = _reference("StableDiffusionImg2ImgPipeline", folder, case, prediction)
    _patched_noise(monkeypatch, "pipeline_stable_diffusion_img2img")
    images, _ = _images()
    want = _diffusers_run(
        pipe, PROMPTS, image=_torch_images(images), strength=strength, **_common()
    )
    options = dict(_jaxdiff_options(case), strength=strength, **_common())
    _assert_parity(want, folder, "img2img", PROMPTS, images, wrong=_more_noise(), **options)


def _inpaint_case(folder, monkeypatch, case, prediction, strength):
    pipe = _reference("StableDiffusionInpaintPipeline", folder, case, prediction)
    _patched_noise(monkeypatch, "pipeline_stable_diffusion_inpaint")
    images, masks = _images()
    want = _diffusers_run(
        pipe,
        PROMPTS,
        image=_torch_images(images),
        mask_image=torch.from_numpy(masks)[:, None],
        strength=strength,
        height=16,
        width=16,
        **_common(),
    )
    options = dict(_jaxdiff_options(case), strength=strength, **_common())
    _assert_parity(want, folder, "inpaint", PROMPTS, images, masks, wrong=_more_noise(), **options)


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
