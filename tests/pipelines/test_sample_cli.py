"""`jaxdiff sample --pretrained`: text-to-image, img2img and inpainting write a PNG grid whose
pixels are the Python API's images and whose text chunks say how they were made."""

import numpy as np
import pytest
from conftest import grid_cells
from PIL import Image

from jaxdiff.cli import main
from jaxdiff.images import read_png_text
from jaxdiff.pipelines import StableDiffusion


def _uint8(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255.0).astype(np.uint8)


@pytest.fixture
def files(tmp_path):
    rng = np.random.RandomState(0)
    image = tmp_path / "in.png"
    Image.fromarray(rng.randint(0, 256, (16, 16, 3), np.uint8)).save(image)
    mask = tmp_path / "mask.png"
    mask_pixels = np.zeros((16, 16), np.uint8)
    mask_pixels[4:12, 4:12] = 255
    Image.fromarray(mask_pixels).save(mask)
    return image, mask


@pytest.mark.parametrize("mode", ["text", "img2img", "inpaint"])
def test_sample_pretrained_writes_the_api_images(sd_folders, files, tmp_path, mode):
    folder = sd_folders["epsilon"]
    image, mask = files
    out = tmp_path / "grid.png"
    argv = ["sample", "--pretrained", str(folder), "--prompt", "a red cat", "--prompt", "sky"]
    argv += ["--negative-prompt", "dog", "--negative-prompt", "rain"]  # one per prompt
    argv += ["--seed", "3", "--steps", "3", "--guidance", "4.5"]
    argv += ["--sampler", "dpmpp_2m", "--num-images", "2", "--out", str(out)]
    extra = {"text": [], "img2img": ["--image", str(image), "--strength", "0.7"]}
    extra["inpaint"] = ["--image", str(image), "--mask", str(mask)]
    assert main(argv + extra[mode]) == 0

    pipe = StableDiffusion.from_pretrained(folder)
    settings = dict(
        negative_prompt=["dog", "rain"],
        seed=3,
        num_inference_steps=3,
        guidance_scale=4.5,
        sampler="dpmpp_2m",
        num_images_per_prompt=2,
    )
    prompts = ["a red cat", "sky"]
    picture = Image.open(image)
    if mode == "text":
        want = pipe(prompts, **settings)
    elif mode == "img2img":
        want = pipe.img2img(prompts, picture, strength=0.7, **settings)
    else:
        want = pipe.inpaint(prompts, picture, Image.open(mask), **settings)
    np.testing.assert_array_equal(grid_cells(out, rows=2, columns=2), _uint8(want))

    text = read_png_text(out)
    assert text["prompt"] == "a red cat | sky" and text["negative_prompt"] == "dog | rain"
    assert (text["seed"], text["sampler"], text["steps"], text["guidance"]) == (
        "3",
        "dpmpp_2m",
        "3",
        "4.5",
    )
    assert text["model"] == str(folder)
    if mode != "text":
        assert text["strength"] == ("0.7" if mode == "img2img" else "1.0")


def test_pretrained_defaults_are_diffusers(sd_folders, tmp_path, monkeypatch):
    """50 steps, guidance 7.5, DDIM, one image per prompt, written under ./samples/."""
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--pretrained", str(sd_folders["epsilon"]), "--prompt", "a"]) == 0
    text = read_png_text(tmp_path / "samples" / "a_seed0.png")
    assert (text["steps"], text["guidance"], text["sampler"]) == ("50", "7.5", "ddim")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mask", "m.png"], "--mask and --strength need --image"),
        (["--strength", "0.5"], "--mask and --strength need --image"),
        (["--image", "missing.png"], "--image 'missing.png' is not a readable image"),
        (["--image", "IMAGE", "--strength", "1.5"], "--strength 1.5 must be in (0, 1]"),
        (["--image", "IMAGE", "--height", "32"], "--height and --width go with text-to-image"),
        (["--steps", "0"], "--steps must be > 0"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
        (["--negative-prompt", "x"] * 2, "2 --negative-prompt for 1 --prompt; give one for all"),
        (["--out", "grid"], "--out 'grid' is neither a .png file nor a folder"),
        (["--control-image", "IMAGE"], "--control-image goes with --controlnet (or a ControlNet"),
        (["--control-scale", "1"], "--control-scale goes with --control-image"),
        (["--controlnet", "c"], "0 --control-image for 1 --controlnet; give one per ControlNet"),
        (
            ["--controlnet", "c", "--control-image", "IMAGE", "--control-scale", "-1"],
            "--control-scale -1.0 must be >= 0",
        ),
        (
            ["--controlnet", "c", "--control-image", "IMAGE"] * 2 + ["--control-scale", "1"] * 3,
            "3 --control-scale for 2 --controlnet",
        ),
        (
            ["--controlnet", "c", "--control-image", "missing.png"],
            "--control-image 'missing.png' is not a readable image",
        ),
    ],
)
def test_bad_sample_arguments_are_one_line_errors(files, tmp_path, capsys, args, message):
    image, _ = files
    args = [str(image) if a == "IMAGE" else a for a in args]
    folder = tmp_path / "no_model_needed"  # every check runs before the weights are read
    code = main(["sample", "--pretrained", str(folder), "--prompt", "a", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_sample_with_a_controlnet_writes_the_api_images(
    sd_folders, controlnet_folders, files, tmp_path
):
    """A ControlNet's control image sets the size; its scale and the file names are in the
    PNG's text."""
    folder, controlnet = sd_folders["epsilon"], controlnet_folders[0]
    image, _ = files
    out = tmp_path / "grid.png"
    argv = ["sample", "--pretrained", str(folder), "--prompt", "a red cat", "--steps", "3"]
    argv += ["--controlnet", str(controlnet), "--control-image", str(image)]
    argv += ["--control-scale", "0.6", "--num-images", "2", "--out", str(out)]
    assert main(argv) == 0
    pipe = StableDiffusion.from_pretrained(folder, controlnet=controlnet)
    want = pipe(
        "a red cat",
        num_inference_steps=3,
        num_images_per_prompt=2,
        control_image=Image.open(image),
        controlnet_conditioning_scale=0.6,
    )
    np.testing.assert_array_equal(grid_cells(out, rows=1, columns=2), _uint8(want))
    text = read_png_text(out)
    assert (text["controlnet"], text["control_image"]) == (str(controlnet), str(image))
    assert text["control_scale"] == "0.6"


def test_workdir_and_pretrained_exclude_each_other(capsys):
    assert main(["sample", "--workdir", "w", "--pretrained", "p", "--prompt", "a"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    # Arguments are checked before the run is looked at.
    assert main(["sample", "--workdir", "w", "--prompt", "a", "--image", "x.png"]) == 2
    assert "--image 'x.png' is not a readable image" in capsys.readouterr().err
    assert main(["sample", "--workdir", "w", "--prompt", "a", "--controlnet", "c"]) == 2
    assert "--controlnet goes with --pretrained" in capsys.readouterr().err
