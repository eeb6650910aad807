"""`jaxdiff eval` and the trainer's periodic evaluation on a tiny trained text-to-image run."""

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_events import ANY_COMPILE_STEP, compile_events
from flax import nnx
from processes import launch, wait
from reference_models import save_clip_model

from jaxdiff.cli import main
from jaxdiff.configuration import load_config
from jaxdiff.errors import UserError
from jaxdiff.evaluation.evaluate import Evaluator
from jaxdiff.evaluation.features import FeatureExtractor
from jaxdiff.train.tasks import load_model, load_task
from jaxdiff.train.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two steps of the tiny shapes model, evaluated for prompt adherence at the end."""
    workdir = tmp_path_factory.mktemp("t2i")
    overrides = [
        "train.steps=2",
        "train.preview_every=0",
        "eval.every=2",
        "eval.metrics=adherence",
        "eval.samples_per_prompt=1",
    ]
    config = load_config(f"{CONFIGS / 'shapes_t2i.py'}:tiny", overrides)
    train(config, workdir, progress=False, make_evaluator=Evaluator)
    return workdir


def test_the_trainer_logs_its_evaluations(run):
    lines = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2]
    for name in ("shape", "colour", "position", "all"):
        assert 0.0 <= lines[0][f"adherence_{name}"] <= 1.0


def test_eval_command_computes_every_metric(run, tmp_path, capsys):
    _, clip_folder = save_clip_model(tmp_path / "clip")
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    args = [
        "eval",
        "--workdir",
        str(workdir),
        "--config.eval.metrics=fid,kid,precision_recall,clip_score,adherence,bits_per_dim",
        "--config.eval.features=clip",
        f"--config.eval.clip_model={clip_folder}",
        "--config.eval.num_samples=8",
        "--config.eval.batch_size=8",
        "--config.eval.bpd_images=4",
        "--config.eval.bpd_steps=4",
    ]
    # Two processes of 4 devices, in batches of 3, with no cached reference: the same numbers.
    split = tmp_path / "two_processes"
    shutil.copytree(run, split)
    two_processes = [a for a in args if not a.startswith("--config.eval.batch_size")]
    two_processes[2] = str(split)
    processes = launch([*two_processes, "--config.eval.batch_size=3", "--out", f"{split}/r.json"])
    assert main(args) == 0
    (first,) = (workdir / "eval").glob("step_0000002_*.json")
    record = json.loads(first.read_text())
    assert record["step"] == 2 and record["eval"]["num_samples"] == 8
    assert record["images"] == {
        "generated_images": 8,
        "data_images": 8,
        "adherence_images": 6,  # the held-out prompts, eval.samples_per_prompt=1 each
        "bpd_images": 4,
    }
    assert record["sample"] == {"sampler": "heun", "steps": 4, "guidance": 3.0}
    results = record["results"]
    assert results["fid"] > 0 and 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1
    assert np.isfinite(results["kid"]) and results["kid_std"] > 0
    assert 0 <= results["clip_score"] <= 100
    assert 0 < results["bits_per_dim"] < 100
    assert "step 2: fid" in capsys.readouterr().out
    # The data features are cached with their statistics, in pytorch-fid's .npz format.
    (cached,) = (workdir / "eval").glob("reference_clip_*.npz")
    with np.load(cached) as stored:
        assert stored["features"].shape == (8, 16) and stored["sigma"].shape == (16, 16)
    stamp = cached.stat().st_mtime_ns
    # KID reuses the cached features; FID against their saved statistics is the same number.
    again = [*args[:3], "--config.eval.metrics=fid,kid", f"--config.eval.reference={cached}"]
    assert main([*again, *args[4:]]) == 0
    assert cached.stat().st_mtime_ns == stamp, "reference features are reused"
    (second,) = set((workdir / "eval").glob("step_0000002_*.json")) - {first}  # first is kept
    against_file = json.loads(second.read_text())["results"]
    assert against_file["fid"] == pytest.approx(results["fid"], rel=1e-5)
    assert against_file["kid"] == pytest.approx(results["kid"], rel=1e-5)

    wait(processes)
    shared = json.loads((split / "r.json").read_text())["results"]
    assert shared.keys() == results.keys()
    for name, value in results.items():
        assert shared[name] == pytest.approx(value, rel=1e-3, abs=1e-6), name  # float32 sums


def test_a_second_evaluation_compiles_nothing(run, tmp_path):
    """The trainer builds one evaluator; every evaluation after the first reuses its programs
    (generation, features, CLIP score, the bits/dim ODE solve), for new weights too."""
    _, clip_folder = save_clip_model(tmp_path / "clip")
    overrides = [
        "eval.metrics=fid,clip_score,bits_per_dim",
        "eval.features=clip",
        f"eval.clip_model={clip_folder}",
        "eval.num_samples=4",
        "eval.bpd_images=2",
        "eval.bpd_steps=2",
    ]
    task = load_task(run, overrides)
    evaluator = Evaluator(task, task.config)
    first = evaluator(load_model(task, run))
    with compile_events(ANY_COMPILE_STEP) as compiles:
        second = evaluator(load_model(task, run))
    assert compiles == []
    assert second == first


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.eval.metrics=fid,sharpness", r"eval.metrics names 'sharpness'; accepted: fid"),
        ("--config.eval.features=vgg", r"eval.features='vgg' is not supported; accepted"),
        ("--config.train.steps=3", r"only eval.\* and sample.\* overrides, got 'train.steps"),
        ("--config.sample.sampler=rk45", r"unknown sampler 'rk45'"),
        ("--config.eval.num_samples=1", r"eval.num_samples must be >= 2, got 1"),
        ("--config.eval.bpd_steps=0", r"eval.bpd_steps must be > 0, got 0"),
        ("--config.eval.metrics=fid", r"eval.inception_weights is not set; give the Inception"),
        ("--config.eval.metrics=clip_score", r"eval.clip_model is not set; give a transformers"),
        ("--config.eval.reference=/no/such.npz", r"eval.reference '/no/such.npz' does not exist"),
        ("--config.eval.metrics=", r"eval.every is 2 but eval.metrics names none"),
    ],
)
def test_eval_errors(run, capsys, override, message):
    assert main(["eval", "--workdir", str(run), override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_eval_with_another_sampler_keeps_every_result(run, tmp_path, capsys):
    folder = tmp_path / "results"
    args = ["eval", "--workdir", str(run), "--out", f"{folder}/", "--config.eval.metrics=adherence"]
    args += ["--config.sample.sampler=euler", "--config.sample.steps", "1"]
    assert main([*args, "--config.eval.samples_per_prompt=1"]) == 0
    (path,) = folder.iterdir()
    assert capsys.readouterr().out.endswith(f"wrote {path}\n")
    record = json.loads(path.read_text())
    assert record["sample"] == {"sampler": "euler", "steps": 1, "guidance": 3.0}
    assert record["images"] == {"adherence_images": 6}
    assert set(record["results"]) == {
        f"adherence_{n}" for n in ("shape", "colour", "position", "all")
    }


def test_periodic_evaluation_without_an_evaluator_is_refused_before_training(tmp_path):
    overrides = ["eval.every=2", "eval.metrics=adherence"]
    config = load_config(f"{CONFIGS / 'shapes_t2i.py'}:tiny", overrides)
    with pytest.raises(UserError, match=r"eval.every is 2 but no evaluator was given"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_model_that_does_not_generate_images_is_refused_before_training(tmp_path):
    config = load_config(f"{CONFIGS / 'shapes_vae.py'}:tiny", ["eval.metrics=fid"])
    config.eval.inception_weights = str(tmp_path)  # exists; never read
    with pytest.raises(UserError, match=r"a 'vae' model does not generate images"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_feature_extractor_pads_batches_to_whole_devices():
    class Project(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(12.0).reshape(3, 4))

        def __call__(self, images):
            return jnp.mean(images, axis=(1, 2)) @ self.w[...]

    images = np.random.default_rng(0).integers(0, 256, (13, 5, 5, 3), dtype=np.uint8)
    extractor = FeatureExtractor(Project(), "project", batch_size=4)
    assert extractor.batch_size == len(jax.local_devices())  # rounded up to whole devices
    expected = np.mean(images / 255.0, axis=(1, 2)) @ np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(extractor(images), expected, rtol=1e-5)
