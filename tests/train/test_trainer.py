"""The training loop end to end on tiny configs: loss, resume, latent diffusion, sampling,
previews and what the trainer says."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from jaxdiff.cli import main
from jaxdiff.configuration import load_config, to_json
from jaxdiff.errors import UserError
from jaxdiff.evaluation.evaluate import Evaluator
from jaxdiff.images import read_png_text
from jaxdiff.pipelines.sample_png import display_scale, sample_text
from jaxdiff.train.tasks import load_task, load_trained
from jaxdiff.train.text_to_image_task import PIXEL_SPACE_NOTE
from jaxdiff.train.trainer import _check_workdir_config, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny(name: str, *overrides: str):
    return load_config(f"{CONFIGS / name}:tiny", list(overrides))


def params(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_enlarged(path: Path, images: tuple[int, int], size: int) -> None:
    """The PNG at ``path`` is a grid of ``images`` (rows, columns) of ``size`` pixels, enlarged
    as `jaxdiff sample` enlarges its grids."""
    rows, columns = images
    with Image.open(path) as picture:
        width, height = picture.size
    scale = display_scale(size)
    assert scale > 1
    assert (height, width) == (scale * (rows * (size + 2) + 2), scale * (columns * (size + 2) + 2))


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("vae")
    train(tiny("shapes_vae.py", "train.steps=6", "train.preview_every=6"), workdir, progress=False)
    return workdir


def test_text_to_image_loss_falls(tmp_path, capsys):
    config = tiny("shapes_t2i.py", "train.steps=40", "train.log_every=1", "train.preview_every=0")
    train(config, tmp_path, progress=False)
    assert PIXEL_SPACE_NOTE in capsys.readouterr().out  # with no vae_workdir
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:5]), losses


def test_resume_gives_the_uninterrupted_run(tmp_path, capsys):
    overrides = ("train.steps=8", "train.checkpoint_every=4", "train.keep_checkpoints=3")
    config = tiny("shapes_vae.py", *overrides, "train.preview_every=0")
    assert train(config, tmp_path, progress=False)["trained"] == 8
    _, uninterrupted = load_trained(tmp_path, use_ema=False)
    _, uninterrupted_ema = load_trained(tmp_path)
    # A crash after step 4's checkpoint: the steps since are lost, and redone on restart.
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    capsys.readouterr()
    assert train(config, tmp_path, progress=False)["trained"] == 4
    checkpoint = tmp_path / "checkpoints" / "4"
    assert capsys.readouterr().out == f"resuming from step 4 of 8 (checkpoint {checkpoint})\n"
    _, resumed = load_trained(tmp_path, use_ema=False)
    _, resumed_ema = load_trained(tmp_path)
    for a, b in zip(params(uninterrupted), params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(params(uninterrupted_ema), params(resumed_ema), strict=True):
        np.testing.assert_array_equal(a, b)
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert logged == sorted(set(logged)), "each step is logged once, also across the resume"
    # Started again when finished: nothing is trained, and the command says so.
    arguments = [f"--config.{o}" for o in (*overrides, "train.preview_every=0")]
    command = ["train", "--config", f"{CONFIGS / 'shapes_vae.py'}:tiny", "--workdir", str(tmp_path)]
    capsys.readouterr()
    assert main([*command, *arguments]) == 0
    assert (
        capsys.readouterr().out == f"{tmp_path} is already trained to step 8 of 8; nothing to do\n"
    )
    assert logged == [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]


def test_divergence_stops_before_a_checkpoint(tmp_path):
    config = tiny(
        "shapes_vae.py",
        "train.steps=6",
        "train.checkpoint_every=2",
        "train.learning_rate=1e30",
        "train.preview_every=0",
    )
    with pytest.raises(UserError, match="not finite at step"):
        train(config, tmp_path, progress=False)
    if (tmp_path / "checkpoints").is_dir() and any((tmp_path / "checkpoints").iterdir()):
        _, model = load_trained(tmp_path, use_ema=False)
        assert all(np.isfinite(p).all() for p in params(model))


def test_workdir_of_another_model_is_refused(tmp_path, vae_workdir):
    config = tiny("shapes_vae.py", "train.steps=6", "model.vae.latent_channels=8")
    with pytest.raises(UserError, match="different 'model' config"):
        train(config, vae_workdir, progress=False)


def test_a_run_saved_before_pretrained_vae_existed_resumes(tmp_path):
    """A field added to the configs later, absent from a saved config, means its default."""
    config = tiny("shapes_t2i.py")
    saved = json.loads(to_json(config))
    del saved["pretrained_vae"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    _check_workdir_config(tmp_path, config)  # resumes
    with config.unlocked():
        config.pretrained_vae = "stabilityai/sd-vae-ft-ema"
    with pytest.raises(UserError, match="different 'pretrained_vae' config"):
        _check_workdir_config(tmp_path, config)


def test_workdir_config_of_an_older_jaxdiff_names_the_missing_fields(tmp_path):
    """`jaxdiff sample` and `jaxdiff eval` (load_task) and resuming (train) refuse a saved config
    that lacks fields every config holds, in one line, before anything is built."""
    config = tiny("shapes_vae.py")
    saved = json.loads(to_json(config))
    del saved["eval"], saved["data"]["resize"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    expected = (
        f"{path} lacks eval, data.resize (written by an older jaxdiff); add them to the file or "
        "start a new run"
    )
    for read in (lambda: load_task(tmp_path), lambda: train(config, tmp_path, progress=False)):
        with pytest.raises(UserError) as error:
            read()
        assert str(error.value) == expected


def test_latent_text_to_image_on_a_trained_autoencoder(tmp_path, vae_workdir, capsys):
    config = tiny(
        "shapes_t2i.py", "train.steps=4", "train.preview_every=4", f"vae_workdir={vae_workdir}"
    )
    train(config, tmp_path, progress=False)
    assert PIXEL_SPACE_NOTE not in capsys.readouterr().out
    _, vae = load_trained(vae_workdir)  # its EMA weights, which the run froze
    # The workdir is self-contained: the autoencoder's weights travel with it.
    shutil.rmtree(vae_workdir / "checkpoints")
    task, model = load_trained(tmp_path)
    frozen = jax.tree.leaves(nnx.state(model.autoencoder, nnx.Param))
    for got, want in zip(frozen, jax.tree.leaves(nnx.state(vae, nnx.Param)), strict=True):
        np.testing.assert_array_equal(got, want)
    assert task.latent_shape == (8, 8, 4)
    scale = float(model.latent_scale[...])
    assert np.isfinite(scale) and scale > 0 and scale != 1.0
    prompts = ["a red circle in the center"] * 2
    # the preview's settings and batch: its compiled loop is reused
    pictures = task.pipeline(model)(prompts, num_inference_steps=config.sample.steps)
    assert pictures.shape == (2, 16, 16, 3) and pictures.dtype == np.float32
    task.config.eval.metrics = "bits_per_dim"
    with pytest.raises(UserError, match="'bits_per_dim' needs a pixel-space model; this one"):
        Evaluator(task, task.config)
    # The preview reads like a `jaxdiff sample` grid: the same text keys, enlarged alike.
    preview = tmp_path / "samples" / "step_0000004.png"
    text = read_png_text(preview)
    assert set(sample_text([], 0, "", 1, 1.0)) | {"model", "step"} == set(text)
    assert text["prompt"] == " | ".join(config.sample.preview_prompts)
    assert (text["model"], text["sampler"]) == (str(tmp_path), config.sample.sampler)
    assert (text["seed"], text["steps"], text["step"]) == ("0", str(config.sample.steps), "4")
    assert_enlarged(preview, images=(1, 2), size=16)


def test_vae_preview_and_logs(vae_workdir):
    assert_enlarged(vae_workdir / "samples" / "step_0000006.png", images=(2, 8), size=16)
    assert list((vae_workdir / "tensorboard").iterdir())
    logged = [json.loads(line) for line in (vae_workdir / "metrics.jsonl").open()]
    assert logged[-1]["step"] == 6 and {"loss", "kl", "reconstruction"} <= set(logged[-1])
    assert not (vae_workdir / "eval.jsonl").exists()  # made at the first evaluation only
