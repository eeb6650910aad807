"""StableDiffusionUpscale against diffusers' StableDiffusionUpscalePipeline on a tiny random x4
upscaler diffusers saves (a UNet with 7 input channels and the noise level as class labels, a
three-level VAE with scaling factor 0.08333, a v-prediction DDIM scheduler and a DDPM
low-resolution scheduler): the latents within 3e-4 of their scale and the images within 1e-3,
both samplers given the same initial and augmentation noise; a run at another noise level, or
with 5% more initial noise, misses by more than 10x both."""

import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import build_clip, build_unet, build_vae, write_tokenizer
from sd_parity import assert_close, assert_misses, diffusers_run, input_images
from transformers import CLIPTokenizer

from jaxdiff.errors import UserError
from jaxdiff.models import ControlNet
from jaxdiff.pipelines import StableDiffusion, StableDiffusionUpscale

PROMPTS = ["a red cat", "blue sky"]
STEPS = 4
UNET = dict(
    in_channels=7,
    out_channels=4,
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=2,
    cross_attention_dim=32,
    norm_num_groups=8,
    use_linear_projection=True,
    only_cross_attention=(True, False),  # as the x4 upscaler's (True, True, True, False)
    num_class_embeds=360,
    sample_size=8,
)
VAE = dict(
    block_out_channels=(8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    scaling_factor=0.08333,
)
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
LOW_RES_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import diffusers

    folder = tmp_path_factory.mktemp("upscaler")
    write_tokenizer(folder / "tokenizer")
    diffusers.StableDiffusionUpscalePipeline(
        vae=build_vae(VAE),
        text_encoder=build_clip("gelu"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=build_unet(UNET),
        low_res_scheduler=diffusers.DDPMScheduler.from_config(LOW_RES_SCHEDULER),
        scheduler=diffusers.DDIMScheduler.from_config(SCHEDULER),
        max_noise_level=350,
    ).save_pretrained(folder)
    return folder


def _noise(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("sampler", "scheduler", "guidance", "negative"),
    [
        ("ddim", "DDIMScheduler", 6.0, ["dog", ""]),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", 1.0, None),  # no guidance
    ],
)
def test_upscale_matches_diffusers(folder, monkeypatch, sampler, scheduler, guidance, negative):
    import diffusers

    low = input_images()[0][:, ::2, ::2]  # [2, 8, 8, 3] in [0, 1]
    latents, image_noise = _noise((2, 4, 8, 8), 0), _noise((2, 3, 8, 8), 1)  # NCHW
    module = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale"
    monkeypatch.setattr(f"{module}.randn_tensor", lambda *args, **kwargs: image_noise)
    reference = diffusers.StableDiffusionUpscalePipeline.from_pretrained(folder)
    reference.scheduler = getattr(diffusers, scheduler).from_config(reference.scheduler.config)
    settings = dict(
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        noise_level=40,
    )
    want = diffusers_run(reference, PROMPTS, image=low, latents=latents, **settings)
    pipe = StableDiffusionUpscale.from_pretrained(folder)
    ours = dict(
        settings,
        image=low,
        sampler=sampler,
        latents=latents.permute(0, 2, 3, 1),
        image_noise=image_noise.permute(0, 2, 3, 1),
    )
    got = pipe(PROMPTS, output_type="latent", **ours)
    assert got.shape == (2, 8, 8, 4)
    assert_close((got, pipe.decode(got)), want)
    assert want[1].shape == (2, 32, 32, 3)
    for wrong in (
        {"noise_level": 20},
        {"latents": _noise((2, 4, 8, 8), 0, 1.05).permute(0, 2, 3, 1)},
    ):
        latents_wrong = pipe(PROMPTS, output_type="latent", **{**ours, **wrong})
        assert_misses((latents_wrong, pipe.decode(latents_wrong)), want)


def test_upscale_draws_its_own_noise_per_image(folder):
    """Without `image_noise` each image's augmentation is drawn from its own key: image i is the
    same whatever the batch it is made in, and differs from the same call at another seed."""
    pipe = StableDiffusionUpscale.from_pretrained(folder)
    low = input_images()[0][:, ::2, ::2]
    both = pipe(PROMPTS, image=low, num_inference_steps=2, output_type="latent")
    second = pipe(
        PROMPTS[1], image=low[1], first_index=1, num_inference_steps=2, output_type="latent"
    )
    np.testing.assert_allclose(second[0], both[1], atol=1e-5)
    other = pipe(PROMPTS, image=low, num_inference_steps=2, seed=1, output_type="latent")
    assert np.abs(other - both).max() > 0.1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, low: p("a", num_inference_steps=1), "give image="),
        (lambda p, low: p("a", image=low[:, :7, :7], num_inference_steps=1), "multiples of 2"),
        (lambda p, low: p("a", image=low, noise_level=351), r"noise_level=351.*\[0, 350\]"),
        (lambda p, low: p("a", image=low, noise_level=2.5), r"noise_level=2.5"),
        (lambda p, low: p("a", image=low, height=64, width=64), r"accepted: 32x32"),
        (lambda p, low: p("a", image=low, image_noise=np.zeros((1, 4, 4, 3))), "image_noise"),
        (lambda p, low: p.img2img("a", low), "no img2img"),
        (lambda p, low: p.inpaint("a", low, low[..., 0]), "no inpaint"),
    ],
)
def test_upscale_refuses_bad_input(folder, call, match):
    pipe = StableDiffusionUpscale.from_pretrained(folder)
    low = input_images()[0][:1, ::2, ::2]
    with pytest.raises(UserError, match=match):
        call(pipe, low)


def test_upscaler_folder_is_not_a_stable_diffusion_text_to_image_model(folder, tmp_path):
    """StableDiffusion refuses the upscaler's UNet in one line, and the upscaler a folder without
    a low-resolution scheduler."""
    with pytest.raises(UserError, match="use StableDiffusionUpscale"):
        StableDiffusion.from_pretrained(folder)
    unet = StableDiffusionUpscale.from_pretrained(folder)._networks()[0]
    with pytest.raises(UserError, match=r"a ControlNet for a UNet with class embeddings"):
        ControlNet.from_unet(unet, rngs=nnx.Rngs(0))
    plain = tmp_path / "plain"
    plain.mkdir()
    for entry in folder.iterdir():
        if entry.name != "low_res_scheduler":
            (plain / entry.name).symlink_to(entry)
    with pytest.raises(UserError, match="no low_res_scheduler"):
        StableDiffusionUpscale.from_pretrained(plain)


def test_upscale_command_writes_the_api_image(folder, tmp_path):
    from PIL import Image

    from jaxdiff.cli import main
    from jaxdiff.images import read_png_text

    small = tmp_path / "small.png"
    pixels = np.random.RandomState(0).randint(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(small)
    out = tmp_path / "large.png"
    argv = ["upscale", "--pretrained", str(folder), "--image", str(small), "--prompt", "a cat"]
    argv += ["--negative-prompt", "dog", "--steps", "3", "--guidance", "5", "--noise-level", "30"]
    assert main([*argv, "--seed", "2", "--out", str(out)]) == 0
    want = StableDiffusionUpscale.from_pretrained(folder)(
        "a cat",
        "dog",
        image=Image.open(small),
        num_inference_steps=3,
        guidance_scale=5.0,
        noise_level=30,
        seed=2,
    )
    written = np.asarray(Image.open(out))
    assert written.shape == (32, 32, 3)
    np.testing.assert_array_equal(written, np.round(want[0] * 255.0).astype(np.uint8))
    text = read_png_text(out)
    assert (text["prompt"], text["negative_prompt"], text["noise_level"]) == ("a cat", "dog", "30")
    assert (text["steps"], text["guidance"], text["sampler"], text["seed"]) == (
        "3",
        "5.0",
        "ddim",
        "2",
    )
    assert main([*argv[:-2], "--noise-level", "-1", "--out", str(tmp_path / "no.png")]) == 2
    assert not (tmp_path / "no.png").exists()
    tiled = tmp_path / "tiled.png"
    assert main([*argv, "--seed", "2", "--tile-size", "4", "--out", str(tiled)]) == 0
    want = StableDiffusionUpscale.from_pretrained(folder)(
        "a cat",
        "dog",
        image=Image.open(small),
        num_inference_steps=3,
        guidance_scale=5.0,
        noise_level=30,
        seed=2,
        tile_size=4,
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(tiled)), np.round(want[0] * 255.0).astype(np.uint8)
    )
    assert read_png_text(tiled)["tile_size"] == "4"
    big = tmp_path / "big.png"  # larger than the 16 pixels the upscaler takes whole: in tiles
    Image.fromarray(np.tile(pixels, (3, 3, 1))).save(big)
    big_out = tmp_path / "big_x4.png"
    argv = ["upscale", "--pretrained", str(folder), "--image", str(big), "--prompt", "a"]
    assert main([*argv, "--steps", "1", "--out", str(big_out)]) == 0
    want = StableDiffusionUpscale.from_pretrained(folder)(
        "a", image=Image.open(big), num_inference_steps=1, tile_size=16
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(big_out)), np.round(want[0] * 255.0).astype(np.uint8)
    )
    assert read_png_text(big_out)["tile_size"] == "16"


def test_sample_command_upscales_its_images(folder, sd_folders, tmp_path, monkeypatch):
    """`jaxdiff sample --upscale`: the text-to-image images, each upscaled with its prompt and
    negative prompt (two images per prompt: the order counts); in tiles of the upscaler's
    `max_untiled_size` when they are larger."""
    from conftest import grid_cells

    from jaxdiff.cli import main

    sd = sd_folders["epsilon"]
    out = tmp_path / "grid.png"
    argv = ["sample", "--pretrained", str(sd), "--prompt", "a red cat", "--prompt", "sky"]
    argv += ["--steps", "2", "--seed", "4", "--upscale", str(folder), "--noise-level", "10"]
    argv += ["--num-images", "2", "--negative-prompt", "dog"]
    assert main([*argv, "--out", str(out)]) == 0
    prompts = ["a red cat", "sky"]
    small = StableDiffusion.from_pretrained(sd)(
        prompts, "dog", num_inference_steps=2, seed=4, num_images_per_prompt=2
    )
    per_image = ["a red cat", "a red cat", "sky", "sky"]
    upscale = dict(image=small, seed=4, noise_level=10)
    want = StableDiffusionUpscale.from_pretrained(folder)(per_image, "dog", **upscale)
    assert want.shape == (4, 64, 64, 3)
    cells = grid_cells(out, rows=2, columns=2, size=64)
    np.testing.assert_array_equal(cells, np.round(want * 255.0).astype(np.uint8))

    small_tiles = StableDiffusionUpscale.from_pretrained(folder, max_untiled_size=8)
    monkeypatch.setattr(StableDiffusionUpscale, "from_pretrained", lambda *a, **k: small_tiles)
    assert main([*argv, "--out", str(out)]) == 0
    want = small_tiles(per_image, "dog", tile_size=8, **upscale)
    cells = grid_cells(out, rows=2, columns=2, size=64)
    np.testing.assert_array_equal(cells, np.round(want * 255.0).astype(np.uint8))


def test_converted_upscaler_gives_the_same_latents(folder, tmp_path):
    """`jaxdiff convert` writes the networks in jaxdiff's format and copies the low-resolution
    scheduler; the converted model upscales to the same latents, to the bit."""
    from jaxdiff.convert import convert

    written = convert(folder, tmp_path / "converted", to="jaxdiff")
    assert "unet -> jaxdiff" in written and "low_res_scheduler (copied)" in written
    low = input_images()[0][:, ::2, ::2]
    settings = dict(image=low, num_inference_steps=2, noise_level=30, output_type="latent")
    want = StableDiffusionUpscale.from_pretrained(folder)(PROMPTS, **settings)
    got = StableDiffusionUpscale.from_pretrained(tmp_path / "converted")(PROMPTS, **settings)
    np.testing.assert_array_equal(got, want)


def test_tiles_are_upscaled_on_their_own_and_blended(folder):
    """With `tile_size`, a pixel one tile covers is that tile's own upscale (made with the key
    `fold_in(key, k)`), a pixel in an overlap the tiles' weighted mean; one tile covering the
    image is the image upscaled whole."""
    import jax

    from jaxdiff.pipelines import tiles

    pipe = StableDiffusionUpscale.from_pretrained(folder)
    low = np.random.RandomState(3).rand(1, 16, 16, 3).astype(np.float32)
    settings = dict(num_inference_steps=2, guidance_scale=3.0, seed=5)
    whole = pipe("a cat", image=low, **settings)
    np.testing.assert_array_equal(pipe("a cat", image=low, tile_size=16, **settings), whole)
    tiled = pipe("a cat", image=low, tile_size=8, tile_overlap=4, **settings)  # 3 x 3 tiles
    assert tiled.shape == (1, 64, 64, 3)
    corners = [(y, x) for y in (0, 4, 8) for x in (0, 4, 8)]
    own = [
        pipe(
            "a cat",
            image=low[:, y : y + 8, x : x + 8],
            key=jax.random.fold_in(jax.random.key(5), k),
            **{k_: v for k_, v in settings.items() if k_ != "seed"},
        )
        for k, (y, x) in enumerate(corners)
    ]
    np.testing.assert_array_equal(tiled[:, :16, :16], own[0][:, :16, :16])  # the first tile's alone
    np.testing.assert_array_equal(tiled[:, 48:, 48:], own[8][:, 16:, 16:])  # the last tile's alone
    blended = tiles.blend(own, [(4 * y, 4 * x) for y, x in corners], (64, 64), 16)
    np.testing.assert_allclose(tiled, blended, rtol=0, atol=1e-7)
    seam = tiled[:, 16:32, :16]  # tiles 0 and 3 overlap there
    between = (seam - own[0][:, 16:32, :16]) * (seam - own[3][:, :16, :16])
    assert (between <= 1e-7).all() and np.abs(seam - own[0][:, 16:32, :16]).max() > 1e-3
    assert np.abs(tiled - whole).max() > 0.01  # the tiles do not see each other


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, r"sides up to 16 whole, or give tile_size="),
        ({"tile_size": 7}, r"tile_size=7; accepted: a multiple of 2 up to 16"),
        ({"tile_size": 8, "tile_overlap": 8}, r"tile_overlap=8; accepted: .*\[0, 8\)"),
        ({"tile_overlap": 2}, "tile_overlap goes with tile_size"),
        ({"tile_size": 8, "latents": np.zeros((1, 8, 8, 4))}, "latents sets one call's noise"),
        ({"tile_size": 8, "output_type": "latent"}, "tile_size gives images"),
    ],
)
def test_tiling_refuses_bad_input(folder, options, match):
    pipe = StableDiffusionUpscale.from_pretrained(folder)
    big = np.zeros((1, 24, 24, 3), np.float32)
    with pytest.raises(UserError, match=match):
        pipe("a", image=big, num_inference_steps=1, **options)
