"""The runs the Stable Diffusion parity tests compare (tests/pipelines/test_pipeline_parity.py
and test_controlnet_parity.py): diffusers' pipelines and jaxdiff's on the same tiny models,
prompts and noise, as (latents, images decoded from them), and what makes them agree or miss."""

import functools

import numpy as np
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
def jaxdiff_pipeline(folder, controlnets: tuple = ()) -> StableDiffusion:
    """jaxdiff's pipeline of a model folder, with the ControlNets of `controlnets` (folders)."""
    return StableDiffusion.from_pretrained(folder, controlnet=list(controlnets))


@functools.cache
def diffusers_pipeline(pipeline_class: str, folder, controlnets: tuple = ()):
    """diffusers' `pipeline_class` of a model folder, with the ControlNets of `controlnets`
    (one `ControlNetModel`, or a `MultiControlNetModel` of several)."""
    import diffusers

    extra = {}
    if controlnets:
        nets = [diffusers.ControlNetModel.from_pretrained(f) for f in controlnets]
        extra["controlnet"] = nets[0] if len(nets) == 1 else diffusers.MultiControlNetModel(nets)
    return getattr(diffusers, pipeline_class).from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, **extra
    )


def reference(pipeline_class: str, folder, case: str, prediction: str, controlnets: tuple = ()):
    """The diffusers pipeline with the case's scheduler built from the model's config."""
    import diffusers

    _, _, scheduler, extra = SAMPLERS[case]
    pipe = diffusers_pipeline(pipeline_class, folder, controlnets)
    config = scheduler_config(prediction)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(config, **extra)
    return pipe


def noise(batch: int = len(PROMPTS)) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # NCHW


def jaxdiff_options(case: str) -> dict:
    sampler, schedule, _, _ = SAMPLERS[case]
    return dict(sampler=sampler, sigma_schedule=schedule, latents=noise().permute(0, 2, 3, 1))


def input_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images [2, 16, 16, 3] in [0, 1] and masks [2, 16, 16] (1: paint)."""
    rng = np.random.RandomState(seed)
    images = rng.rand(2, 16, 16, 3).astype(np.float32)
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, 4:12, 2:10] = 1.0
    masks[1, 8:, :] = 1.0
    return images, masks


Run = tuple[np.ndarray, np.ndarray]  # (latents [B, h, w, c], images [B, H, W, 3] in [0, 1])


def diffusers_run(pipe, *args, **kwargs) -> Run:
    """A diffusers pipeline call's latents, and its images decoded from them as the pipeline
    decodes them."""
    latents = pipe(*args, output_type="latent", **kwargs).images  # [B, c, h, w]
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    return latents.permute(0, 2, 3, 1).numpy(), images


def jaxdiff_run(folder, method: str, *args, controlnets: tuple = (), **kwargs) -> Run:
    """The latents of a call of the jaxdiff pipeline's `method` ("__call__", "img2img",
    "inpaint"), and its images decoded from them."""
    pipe = jaxdiff_pipeline(folder, controlnets)
    latents = getattr(pipe, method)(*args, output_type="latent", **kwargs)
    return latents, pipe.decode(latents)


def errors(got: Run, want: Run) -> tuple[float, float]:
    """(max abs image error, max abs latent error over the reference's max |latent|)."""
    (latents, images), (want_latents, want_images) = got, want
    latent_error = np.abs(latents - want_latents).max() / np.abs(want_latents).max()
    return float(np.abs(images - want_images).max()), float(latent_error)


def assert_close(got: Run, want: Run) -> None:
    (latents, images), (want_latents, want_images) = got, want
    assert images.shape == want_images.shape and images.dtype == np.float32
    assert latents.shape == want_latents.shape and latents.dtype == np.float32
    assert_far_from_flat(want_images)
    image_error, latent_error = errors(got, want)
    assert image_error < TOLERANCE and latent_error < LATENT_TOLERANCE, (image_error, latent_error)


def assert_misses(wrong: Run, want: Run) -> None:
    """A deliberately wrong run misses the reference by more than MISS x both tolerances."""
    image_error, latent_error = errors(wrong, want)
    assert image_error > MISS * TOLERANCE, image_error
    assert latent_error > MISS * LATENT_TOLERANCE, latent_error


def assert_parity(
    want: Run, folder, method: str, *args, wrong: dict, controlnets: tuple = (), **options
) -> None:
    """The jaxdiff pipeline's `method` matches `want`; the same call with the `wrong` options
    (traced: the compiled loop is reused) misses it."""
    run = functools.partial(jaxdiff_run, folder, method, *args, controlnets=controlnets)
    assert_close(run(**options), want)
    assert_misses(run(**{**options, **wrong}), want)


def more_noise() -> dict:
    """5% more initial noise than `jaxdiff_options` gives."""
    return dict(latents=1.05 * noise().permute(0, 2, 3, 1))


def common() -> dict:
    return dict(negative_prompt=NEGATIVES, num_inference_steps=STEPS, guidance_scale=GUIDANCE)


def patched_noise(monkeypatch, module: str) -> None:
    """diffusers' pipeline `module` (e.g. "stable_diffusion.pipeline_stable_diffusion_img2img")
    draws `noise()` as the noise it adds to the image."""
    import importlib

    target = importlib.import_module(f"diffusers.pipelines.{module}")
    monkeypatch.setattr(target, "randn_tensor", lambda *args, **kwargs: noise())


def torch_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)  # [B, 3, H, W] in [0, 1]
