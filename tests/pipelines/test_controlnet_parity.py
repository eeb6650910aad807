"""StableDiffusion with ControlNets against diffusers' StableDiffusionControlNetPipeline,
StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetInpaintPipeline and
MultiControlNetModel on the same tiny random models (`sd_parity`), control images, prompts and
noise: final latents within 3e-4 of their scale and images within 1e-3, as the pipelines'
parity; in every case a deliberately wrong run (the ControlNet's scale x 1.1, or 5% more initial
noise) misses by more than 10x both, and the same call without the ControlNets misses too (the
residuals matter).
"""

import numpy as np
import pytest
import torch
from sd_parity import (
    PROMPTS,
    assert_misses,
    assert_parity,
    common,
    diffusers_run,
    input_images,
    jaxdiff_options,
    jaxdiff_run,
    noise,
    patched_noise,
    reference,
    torch_images,
)


def _control_images(seed: int = 5) -> np.ndarray:
    """Control images [2, 16, 16, 3] in [0, 1]: one per prompt."""
    return np.random.RandomState(seed).rand(2, 16, 16, 3).astype(np.float32)


def _without_controlnets(want, folder, method: str, *args, **options) -> None:
    """The same call on the model alone misses `want`."""
    control = ("control_image", "controlnet_conditioning_scale", "guess_mode")
    plain = {k: v for k, v in options.items() if k not in control and "control_guidance" not in k}
    assert_misses(jaxdiff_run(folder, method, *args, **plain), want)


@pytest.mark.parametrize(
    ("case", "prediction", "guess_mode", "guidance"),
    [
        ("ddim", "epsilon", False, 5.0),
        ("unipc", "v_prediction", True, 5.0),
        ("dpmpp_2m", "epsilon", True, 1.0),
    ],
)
def test_text_to_image_matches_diffusers(
    sd_folders, controlnet_folders, case, prediction, guess_mode, guidance
):
    """One ControlNet, a control image per prompt; guess mode with and without guidance."""
    folder, nets = sd_folders[prediction], controlnet_folders[:1]
    pipe = reference("StableDiffusionControlNetPipeline", folder, case, prediction, nets)
    settings = dict(
        common(), guidance_scale=guidance, controlnet_conditioning_scale=0.7, guess_mode=guess_mode
    )
    control = _control_images()
    want = diffusers_run(pipe, PROMPTS, image=torch_images(control), latents=noise(), **settings)
    options = dict(jaxdiff_options(case), control_image=control, **settings)
    wrong = dict(controlnet_conditioning_scale=0.77)
    assert_parity(want, folder, "__call__", PROMPTS, wrong=wrong, controlnets=nets, **options)
    _without_controlnets(want, folder, "__call__", PROMPTS, **options)


def test_several_controlnets_with_windows_match_diffusers(sd_folders, controlnet_folders):
    """Two ControlNets summed, each with its scale and its window of the steps (the second on
    for the first 60%, the first from 20% to 80%); one control image for both prompts."""
    case, prediction = "dpmpp_2m_karras", "epsilon"
    folder, nets = sd_folders[prediction], controlnet_folders
    pipe = reference("StableDiffusionControlNetPipeline", folder, case, prediction, nets)
    control = _control_images()
    settings = dict(
        common(),
        controlnet_conditioning_scale=[1.0, 0.5],
        control_guidance_start=[0.2, 0.0],
        control_guidance_end=[0.8, 0.6],
    )
    want = diffusers_run(
        pipe,
        PROMPTS,
        image=[torch_images(control[:1]), torch_images(control)],
        latents=noise(),
        **settings,
    )
    options = dict(jaxdiff_options(case), control_image=[control[0], control], **settings)
    wrong = dict(controlnet_conditioning_scale=[1.1, 0.55])
    assert_parity(want, folder, "__call__", PROMPTS, wrong=wrong, controlnets=nets, **options)
    whole = dict(options, control_guidance_start=0.0, control_guidance_end=1.0)
    assert_misses(jaxdiff_run(folder, "__call__", PROMPTS, controlnets=nets, **whole), want)


def test_img2img_matches_diffusers(sd_folders, controlnet_folders, monkeypatch):
    """Strength 0.6 runs the last 3 of 5 steps; the window is over those 3 (on for the first)."""
    folder, nets = sd_folders["epsilon"], controlnet_folders[1:]
    pipe = reference("StableDiffusionControlNetImg2ImgPipeline", folder, "ddim", "epsilon", nets)
    patched_noise(monkeypatch, "controlnet.pipeline_controlnet_img2img")
    images, _ = input_images()
    control = _control_images()
    want = diffusers_run(
        pipe,
        PROMPTS,
        image=torch_images(images),
        control_image=torch_images(control),
        strength=0.6,
        control_guidance_end=0.5,
        **common(),
    )
    options = dict(
        jaxdiff_options("ddim"),
        control_image=control,
        strength=0.6,
        control_guidance_end=0.5,
        **common(),
    )
    wrong = dict(controlnet_conditioning_scale=0.88)  # diffusers' img2img default: 0.8
    assert_parity(
        want, folder, "img2img", PROMPTS, images, wrong=wrong, controlnets=nets, **options
    )
    _without_controlnets(want, folder, "img2img", PROMPTS, images, **options)
    whole = dict(options, control_guidance_end=1.0)  # the window matters
    assert_misses(jaxdiff_run(folder, "img2img", PROMPTS, images, controlnets=nets, **whole), want)


@pytest.mark.parametrize("nine_channels", [False, True])
def test_inpaint_matches_diffusers(
    sd_folders,
    inpainting_folders,
    controlnet_folders,
    inpainting_controlnet_folder,
    monkeypatch,
    nine_channels,
):
    """A 4-channel UNet (the known region re-imposed) and a 9-channel one (whose ControlNet
    reads the 4 latent channels)."""
    if nine_channels:
        folder, nets = inpainting_folders["epsilon"], (inpainting_controlnet_folder,)
    else:
        folder, nets = sd_folders["v_prediction"], controlnet_folders[:1]
    prediction = "epsilon" if nine_channels else "v_prediction"
    pipe = reference("StableDiffusionControlNetInpaintPipeline", folder, "euler", prediction, nets)
    patched_noise(monkeypatch, "controlnet.pipeline_controlnet_inpaint")
    images, masks = input_images()
    control = _control_images()
    want = diffusers_run(
        pipe,
        PROMPTS,
        image=torch_images(images),
        mask_image=torch.from_numpy(masks)[:, None],
        control_image=torch_images(control),
        height=16,
        width=16,
        **common(),
    )
    options = dict(jaxdiff_options("euler"), control_image=control, **common())
    wrong = dict(controlnet_conditioning_scale=0.55)  # diffusers' inpainting default: 0.5
    assert_parity(
        want, folder, "inpaint", PROMPTS, images, masks, wrong=wrong, controlnets=nets, **options
    )
    _without_controlnets(want, folder, "inpaint", PROMPTS, images, masks, **options)
