"""StableDiffusionXL against diffusers' StableDiffusionXLPipeline and its refiner
(StableDiffusionXLImg2ImgPipeline with `requires_aesthetics_score`) on one tiny random SDXL model
diffusers saves: the final latents within 3e-4 of their scale and the images within 1e-3, with
micro-conditioning away from its defaults; a deliberately wrong run (5% more initial noise, or
other sizes) misses by more than 10x both."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import (
    SD15_SCHEDULER,
    build_unet,
    near_deterministic_vae,
    sdxl_text_encoders,
    sdxl_unet,
    write_tokenizer,
)
from sd_parity import assert_close, assert_misses, diffusers_run, input_images, torch_images
from transformers import CLIPTokenizer

from jaxdiff.configuration import load_config
from jaxdiff.convert import convert, load_pipeline_components
from jaxdiff.errors import UserError
from jaxdiff.models import ControlNet
from jaxdiff.pipelines import StableDiffusion, StableDiffusionXL, vae_latents
from jaxdiff.train.tasks import make_task

PROMPTS = ["a red cat", "blue sky"]
STEPS = 4
SCHEDULER = {
    **SD15_SCHEDULER,
    "_class_name": "EulerDiscreteScheduler",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
}
SIZES = dict(original_size=(64, 48), crops_coords_top_left=(4, 8), target_size=(16, 16))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """{"base": folder, "refiner": folder} of one tiny SDXL model and its refiner."""
    import diffusers

    first, second = sdxl_text_encoders()
    base_dir, refiner_dir = tmp_path_factory.mktemp("sdxl"), tmp_path_factory.mktemp("refiner")
    write_tokenizer(base_dir / "tokenizer")
    write_tokenizer(base_dir / "tokenizer_2", pad_token="!")  # as SDXL's second tokenizer
    tokenizers = [CLIPTokenizer.from_pretrained(base_dir / n) for n in ("tokenizer", "tokenizer_2")]
    assert tokenizers[0].pad_token_id != tokenizers[1].pad_token_id
    vae = near_deterministic_vae()
    scheduler = diffusers.EulerDiscreteScheduler.from_config(SCHEDULER)
    diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=build_unet(sdxl_unet()),
        scheduler=scheduler,
    ).save_pretrained(base_dir)
    diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=second,
        tokenizer=None,
        tokenizer_2=tokenizers[1],
        unet=build_unet(sdxl_unet(refiner=True)),
        scheduler=scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    ).save_pretrained(refiner_dir)
    return {"base": base_dir, "refiner": refiner_dir}


def _noise(scale: float = 1.0, count: int = 2) -> torch.Tensor:
    return scale * torch.randn(count, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def _jaxdiff_run(pipe, method: str, *args, **kwargs):
    latents = getattr(pipe, method)(*args, output_type="latent", **kwargs)
    return latents, pipe.decode(latents)


# The second text encoder's own prompts, diffusers' `prompt_2` and `negative_prompt_2`, and the
# prompts read a layer further down (`clip_skip`; the negative prompts are not).
SECOND_PROMPTS = {"prompt_2": ["a blue dog", "red sun"], "negative_prompt_2": "cat", "clip_skip": 1}


@pytest.mark.parametrize(
    ("sampler", "scheduler", "negative", "rescale", "second", "per_prompt"),
    [
        # Zero negative conditioning; two images per prompt (diffusers' order: the first
        # prompt's, then the second's).
        ("euler", "EulerDiscreteScheduler", None, 0.0, {}, 2),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", ["dog", ""], 0.7, SECOND_PROMPTS, 1),
    ],
)
def test_text_to_image_matches_diffusers(
    folders, sampler, scheduler, negative, rescale, second, per_prompt
):
    import diffusers

    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(folders["base"])
    reference.scheduler = getattr(diffusers, scheduler).from_config(SCHEDULER)
    settings = dict(
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        guidance_rescale=rescale,
        num_images_per_prompt=per_prompt,
        **SIZES,
        **second,
    )
    count = len(PROMPTS) * per_prompt
    want = diffusers_run(reference, PROMPTS, latents=_noise(count=count), **settings)
    pipe = StableDiffusionXL.from_pretrained(folders["base"])
    ours = dict(settings, sampler=sampler, latents=_noise(count=count).permute(0, 2, 3, 1))
    assert_close(_jaxdiff_run(pipe, "__call__", PROMPTS, **ours), want)
    wrong = dict(ours, latents=_noise(1.05, count).permute(0, 2, 3, 1))
    assert_misses(_jaxdiff_run(pipe, "__call__", PROMPTS, **wrong), want)
    other_sizes = dict(ours, original_size=(16, 16), crops_coords_top_left=(0, 0))
    assert_misses(_jaxdiff_run(pipe, "__call__", PROMPTS, **other_sizes), want)
    for name in second:  # each of the second encoder's prompts reaches it; so does the skip
        without = dict(ours, **{name: 0 if name == "clip_skip" else None})
        assert_misses(_jaxdiff_run(pipe, "__call__", PROMPTS, **without), want)


def test_base_img2img_with_negative_sizes_matches_diffusers(folders, monkeypatch):
    """img2img's negative micro-conditioning: each negative size defaults to its positive one,
    the crop is the positive one. One image: diffusers pairs the negative and positive time ids
    of a batch in the wrong order (`torch.cat([neg, pos]).repeat(B, 1)`)."""
    import diffusers

    reference = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folders["base"])
    target = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img"
    monkeypatch.setattr(f"{target}.randn_tensor", lambda *args, **kwargs: _noise()[:1])
    images, _ = input_images()
    settings = dict(
        num_inference_steps=STEPS,
        strength=0.6,
        negative_prompt="dog",
        negative_original_size=(32, 32),
        **SIZES,
    )
    want = diffusers_run(reference, PROMPTS[:1], image=torch_images(images[:1]), **settings)
    pipe = StableDiffusionXL.from_pretrained(folders["base"])
    ours = dict(settings, latents=_noise()[:1].permute(0, 2, 3, 1))
    assert_close(_jaxdiff_run(pipe, "img2img", PROMPTS[:1], images[:1], **ours), want)
    wrong = dict(ours, negative_original_size=None)
    assert_misses(_jaxdiff_run(pipe, "img2img", PROMPTS[:1], images[:1], **wrong), want)


def test_a_converted_folder_gives_the_same_latents(folders, tmp_path):
    """`jaxdiff convert` writes both text encoders and tokenizers of the base, and the refiner's
    one; the converted folders give the pipeline's latents to the bit."""
    settings = dict(num_inference_steps=STEPS, seed=3, output_type="latent", **SIZES)
    for name, folder in folders.items():
        written = convert(folder, tmp_path / name, to="jaxdiff")
        assert ("text_encoder -> jaxdiff" in written) == (name == "base")
        assert "text_encoder_2 -> jaxdiff" in written and "tokenizer_2 (copied)" in written
        want = StableDiffusionXL.from_pretrained(folder)(PROMPTS, **settings)
        got = StableDiffusionXL.from_pretrained(tmp_path / name)(PROMPTS, **settings)
        np.testing.assert_array_equal(got, want)


def test_the_refiner_matches_diffusers_img2img(folders, monkeypatch):
    import diffusers

    reference = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folders["refiner"])
    target = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img"
    monkeypatch.setattr(f"{target}.randn_tensor", lambda *args, **kwargs: _noise())
    images, _ = input_images()
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        strength=0.6,
        aesthetic_score=7.0,
        original_size=(64, 48),
        crops_coords_top_left=(4, 8),
    )
    want = diffusers_run(reference, PROMPTS, image=torch_images(images), **settings)
    pipe = StableDiffusionXL.from_pretrained(folders["refiner"])
    ours = dict(settings, sampler="euler", latents=_noise().permute(0, 2, 3, 1))
    assert_close(_jaxdiff_run(pipe, "img2img", PROMPTS, images, **ours), want)
    wrong = dict(ours, aesthetic_score=2.0)
    assert_misses(_jaxdiff_run(pipe, "img2img", PROMPTS, images, **wrong), want)


def test_the_base_hands_its_noisy_latents_to_the_refiner_as_diffusers(folders):
    """diffusers' ensemble of experts: the base stops at `denoising_end` and returns its noisy
    state, from which the refiner starts at `denoising_start`. The Euler family holds `x`,
    DPM-Solver++ the VP state `x / sqrt(1 + sigma^2)`: a base of each kind stops, and a refiner
    of each kind takes the Euler base's latents. The base without the cut misses, and so does a
    refiner cut elsewhere."""
    import diffusers

    base = diffusers.StableDiffusionXLPipeline.from_pretrained(folders["base"])
    base.scheduler = diffusers.EulerDiscreteScheduler.from_config(SCHEDULER)
    settings = dict(num_inference_steps=STEPS, guidance_scale=5.0, **SIZES)
    want = diffusers_run(base, PROMPTS, latents=_noise(), denoising_end=0.6, **settings)
    pipe = StableDiffusionXL.from_pretrained(folders["base"])
    ours = dict(settings, sampler="euler", latents=_noise().permute(0, 2, 3, 1))
    assert_close(_jaxdiff_run(pipe, "__call__", PROMPTS, denoising_end=0.6, **ours), want)
    assert_misses(_jaxdiff_run(pipe, "__call__", PROMPTS, **ours), want)
    handed = want[0]  # [2, 8, 8, 4]
    base.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(SCHEDULER)
    vp = diffusers_run(base, PROMPTS, latents=_noise(), denoising_end=0.6, **settings)
    ours_vp = dict(ours, sampler="dpmpp_2m", denoising_end=0.6)  # its VP state at the cut
    assert_close(_jaxdiff_run(pipe, "__call__", PROMPTS, **ours_vp), vp)
    reference = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folders["refiner"])
    refiner = StableDiffusionXL.from_pretrained(folders["refiner"])
    settings = dict(num_inference_steps=STEPS, guidance_scale=5.0, aesthetic_score=7.0)
    for sampler, scheduler in [
        ("euler", diffusers.EulerDiscreteScheduler),
        ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler),
    ]:
        reference.scheduler = scheduler.from_config(SCHEDULER)
        image = torch.from_numpy(np.ascontiguousarray(handed)).permute(0, 3, 1, 2)
        want = diffusers_run(reference, PROMPTS, image=image, denoising_start=0.6, **settings)
        ours = dict(settings, sampler=sampler, denoising_start=0.6, strength=0.1)  # unused
        assert_close(_jaxdiff_run(refiner, "img2img", PROMPTS, handed, **ours), want)
    elsewhere = dict(ours, denoising_start=0.3)
    assert_misses(_jaxdiff_run(refiner, "img2img", PROMPTS, handed, **elsewhere), want)


def test_an_sdxl_folder_is_refused_by_the_sd_pipeline_and_back(folders, sd_folders):
    with pytest.raises(UserError, match="text_encoder_2: not an SDXL model"):
        StableDiffusionXL.from_pretrained(sd_folders["epsilon"])
    with pytest.raises(UserError, match=r"an SDXL model .* use StableDiffusionXL"):
        StableDiffusion.from_pretrained(folders["base"])
    index = json.loads((folders["refiner"] / "model_index.json").read_text())
    assert index["requires_aesthetics_score"] is True
    config = load_config("sd15_finetune:tiny", [f"pretrained={folders['base']}"])
    with pytest.raises(UserError, match="is an SDXL model; fine-tuning it is not supported yet"):
        make_task(config)
    unet = StableDiffusionXL.from_pretrained(folders["base"])._networks()[0]
    with pytest.raises(UserError, match=r"a ControlNet for an SDXL UNet .* is not supported"):
        ControlNet.from_unet(unet, rngs=nnx.Rngs(0))


def test_parts_that_do_not_fit_are_refused_in_one_line(folders):
    parts = load_pipeline_components(folders["base"])
    given = dict(
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        text_encoder_2=parts.text_encoder_2,
        tokenizer=parts.tokenizer,
        tokenizer_2=parts.tokenizer_2,
        scheduler_config=parts.scheduler_config,
    )
    with pytest.raises(UserError, match=r"takes 44 features, not 20 pooled \+ 5 x 4 \(requires"):
        StableDiffusionXL(**given, requires_aesthetics_score=True)
    with pytest.raises(UserError, match="text_encoder and tokenizer: give both"):
        StableDiffusionXL(**{**given, "tokenizer": None})
    with pytest.raises(UserError, match="text_encoder_2 has no text projection"):
        StableDiffusionXL(**{**given, "text_encoder_2": parts.text_encoder})
    longer = copy.deepcopy(parts.tokenizer_2)
    longer.model_max_length = 32
    with pytest.raises(UserError, match=r"model_max_length differ \(\[16, 32\]\)"):
        StableDiffusionXL(**{**given, "tokenizer_2": longer})
    with pytest.raises(UserError, match=r"an SDXL UNet \(addition_embed_type='text_time'\); use"):
        StableDiffusion(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, {})
    pipe = StableDiffusionXL(**given)
    with pytest.raises(UserError, match=r"original_size=1024; accepted: two numbers"):
        pipe(PROMPTS, num_inference_steps=2, original_size=1024)
    with pytest.raises(
        UserError, match=r"prompt_2 has 3 entries for 2 prompts; give one per prompt"
    ):
        pipe(PROMPTS, num_inference_steps=2, prompt_2=["a", "b", "c"])
    refiner = StableDiffusionXL.from_pretrained(folders["refiner"])
    with pytest.raises(UserError, match=r"negative_prompt_2 is for a second tokenizer; this"):
        refiner(PROMPTS, num_inference_steps=2, negative_prompt_2="dog")


def test_a_float16_pipeline_decodes_in_float32_as_diffusers(folders):
    """`force_upcast`: a float16 pipeline's VAE computes in float32, as diffusers' SDXL
    pipelines upcast it; latents large enough to overflow the float16 VAE decode to finite
    images."""
    pipe = StableDiffusionXL.from_pretrained(folders["base"], dtype=jnp.float16)
    unet, vae = pipe._networks()[:2]
    assert (unet.dtype, vae.dtype) == (jnp.float16, jnp.float32)
    assert {a.dtype for a in jax.tree.leaves(nnx.state(vae))} == {np.dtype(np.float32)}
    latents = 1e4 * np.random.RandomState(0).randn(1, 8, 8, 4).astype(np.float32)
    assert np.isfinite(pipe.decode(latents)).all()
    half = load_pipeline_components(folders["base"], dtype=jnp.float16, sdxl=True).vae
    assert not np.isfinite(np.asarray(vae_latents.decode_latents(half, latents))).all()
