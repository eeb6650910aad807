"""The `jaxdiff` command: train, sample, and one-line errors for bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdiff.cli import main
from jaxdiff.images import read_png_text

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
T2I_TINY = f"{CONFIGS / 'shapes_t2i.py'}:tiny"
VAE_TINY = f"{CONFIGS / 'shapes_vae.py'}:tiny"


@pytest.fixture(scope="module")
def t2i_workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("t2i")
    args = ["train", "--config", T2I_TINY, "--workdir", str(workdir), "--no-progress"]
    assert main([*args, "--config.train.steps=2", "--config.train.preview_every=0"]) == 0
    return workdir


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "config, override, message",
    [
        (T2I_TINY, "--config.train.stesp=3", "unknown config key 'train.stesp'"),
        (T2I_TINY, "--config.train.steps=abc", "takes int, got 'abc'"),
        (T2I_TINY, "--config.train.steps=0", "train.steps must be > 0, got 0"),
        (T2I_TINY, "--config.sample.guidance=-1", "sample.guidance must be >= 0, got -1.0"),
        (T2I_TINY, "--config.sample.sampler=rk45", "unknown sampler 'rk45'; accepted: ddim, ddpm"),
        (VAE_TINY, "--config.data.image_size=17", "image_size 17 is not divisible by"),
        (VAE_TINY, "--config.model.dtype=float8", "model.dtype='float8' is not supported"),
        (T2I_TINY, "--config.vae_workdir=/no/such/dir", "holds no trained autoencoder"),
        (T2I_TINY, "--config.sample.preview_prompts=('a pink star',)", "unknown word 'pink'"),
        (f"{CONFIGS / 'shapes_t2i.py'}:huge", "--config.seed=1", "unknown config variant 'huge'"),
    ],
)
def test_bad_training_input_is_one_line_and_writes_nothing(
    capsys, tmp_path, config, override, message
):
    workdir = tmp_path / "run"
    err = one_line_error(capsys, ["train", "--config", config, "--workdir", str(workdir), override])
    assert message in err
    assert not workdir.exists()


def test_sample_writes_a_png_with_its_settings(t2i_workdir, tmp_path, caplog, capsys):
    folder = tmp_path / "grids"  # a folder that does not exist yet
    argv = ["sample", "--workdir", str(t2i_workdir), "--prompt", "a red circle in the center"]
    argv += ["--negative-prompt", "a blue square in the center", "--seed", "3", "--steps", "3"]
    argv += ["--guidance", "2.5", "--sampler", "euler", "--num-images", "2"]
    assert main([*argv, "--out", f"{folder}/"]) == 0
    out = folder / "a_red_circle_in_the_center_seed3.png"
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert "read only" not in caplog.text  # orbax's notice on opening checkpoints to read
    text = read_png_text(out)
    assert text["prompt"] == "a red circle in the center"
    assert text["negative_prompt"] == "a blue square in the center"
    assert (text["seed"], text["sampler"], text["steps"], text["guidance"]) == (
        "3",
        "euler",
        "3",
        "2.5",
    )


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_sample_from_an_image_with_a_trained_run(t2i_workdir, tmp_path, mode):
    from PIL import Image

    picture = np.zeros((32, 32, 3), np.uint8)
    picture[8:24, 8:24] = (255, 0, 0)
    Image.fromarray(picture).save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    argv = ["sample", "--workdir", str(t2i_workdir), "--prompt", "a red square in the center"]
    argv += ["--steps", "2", "--num-images", "1", "--image", str(tmp_path / "in.png")]
    argv += ["--mask", str(tmp_path / "mask.png")] if mode == "inpaint" else ["--strength", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0
    written = np.asarray(Image.open(out).convert("RGB"))  # one 32 px image in a 2 px border, 4x
    assert written.shape == ((2 + 32 + 2) * 4,) * 2 + (3,)
    image = written[8 : 8 + 32 * 4 : 4, 8 : 8 + 32 * 4 : 4].astype(int)  # [32, 32, 3]
    if mode == "inpaint":  # the known top half is kept, the bottom half painted
        np.testing.assert_allclose(image[:16], picture[:16], atol=1)
        assert np.abs(image[16:] - picture[16:]).max() > 10
    assert read_png_text(out)["image"] == str(tmp_path / "in.png")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "a purple circle"], "unknown word 'purple' in prompt 'a purple circle'"),
        (["--prompt", "a red circle", "--steps", "0"], "--steps must be > 0, got 0"),
        (["--prompt", "a red circle", "--guidance", "-2"], "--guidance must be >= 0, got -2.0"),
        (["--prompt", "a red circle", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["--prompt", "a red circle", "--num-images", "0"], "--num-images must be > 0"),
        (["--prompt", "a red circle", "--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (["--prompt", "a red circle", "--out", "a.jpg"], "--out 'a.jpg' is neither a .png file"),
    ],
)
def test_bad_sampling_input_is_one_line(capsys, t2i_workdir, extra, message):
    before = sorted(t2i_workdir.rglob("*"))
    err = one_line_error(capsys, ["sample", "--workdir", str(t2i_workdir), *extra])
    assert message in err
    assert sorted(t2i_workdir.rglob("*")) == before


def test_a_control_image_needs_a_controlnet_run(capsys, t2i_workdir, tmp_path):
    control = tmp_path / "control.png"
    Image.new("RGB", (16, 16)).save(control)
    argv = ["sample", "--workdir", str(t2i_workdir), "--prompt", "a red circle"]
    err = one_line_error(capsys, [*argv, "--control-image", str(control)])
    assert f"--control-image needs a ControlNet; --workdir '{t2i_workdir}' holds a" in err


def test_an_unknown_word_lists_the_vocabulary_by_kind(capsys, t2i_workdir):
    argv = ["sample", "--workdir", str(t2i_workdir), "--prompt", "a pink dot"]
    err = one_line_error(capsys, argv)
    assert "shapes: circle, square, triangle; colours: red, green, blue, yellow, magenta, " in err
    assert "did you mean" not in err  # no word is close to "pink"


def test_workdir_that_is_a_file(capsys, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    err = one_line_error(capsys, ["train", "--config", T2I_TINY, "--workdir", str(path)])
    assert "is a file" in err


def test_vae_workdir_holding_another_task(capsys, tmp_path, t2i_workdir):
    argv = ["train", "--config", T2I_TINY, "--workdir", str(tmp_path / "w")]
    err = one_line_error(capsys, [*argv, f"--config.vae_workdir={t2i_workdir}"])
    assert "holds a 'text_to_image' run, not an autoencoder" in err


def test_workdir_without_checkpoint(capsys, tmp_path):
    err = one_line_error(capsys, ["sample", "--workdir", str(tmp_path), "--prompt", "a red circle"])
    assert "has no checkpoint" in err


@pytest.mark.parametrize("command", ["train", "eval", "sample", "compare-samplers"])
def test_help_explains_config_overrides(capsys, command):
    with pytest.raises(SystemExit) as exit_code:
        main([command, "--help"])
    assert exit_code.value.code == 0
    help_text = capsys.readouterr().out
    assert "--config-help" in help_text
    assert "--config.KEY=VALUE" in help_text or "takes no --config.KEY overrides" in help_text


def test_eval_help_lists_the_metrics_and_what_sizes_them(capsys):
    from jaxdiff.config_groups import METRICS

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--config.eval.metrics=NAME[,NAME...]): {', '.join(METRICS)}" in help_text
    for field in ("eval.num_samples", "eval.samples_per_prompt", "--config.sample.sampler="):
        assert field in help_text


def test_config_help_prints_the_fields_with_their_values(capsys, tmp_path, t2i_workdir):
    workdir = tmp_path / "never_made"
    argv = ["train", "--config", T2I_TINY, "--config.train.steps", "3", "--config-help"]
    assert main([*argv, "--workdir", str(workdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "train.steps = 3" in lines and "sample.sampler = 'heun'" in lines
    assert not workdir.exists()
    assert main(["train", "--config", T2I_TINY, "--config-help"]) == 0, "no --workdir needed"
    capsys.readouterr()
    # A trained run's saved config, with the overrides eval would apply.
    argv = ["eval", "--workdir", str(t2i_workdir), "--config.sample.steps=7", "--config-help"]
    assert main(argv) == 0
    assert "sample.steps = 7" in capsys.readouterr().out.splitlines()
    assert main(["sample", "--workdir", str(t2i_workdir), "--config-help"]) == 0
    assert "train.steps = 2" in capsys.readouterr().out.splitlines()
    err = one_line_error(capsys, ["sample", "--pretrained", "p", "--config-help"])
    assert "--config-help prints a trained run's config; give --workdir" in err


def test_an_override_without_a_value_is_one_line(capsys):
    argv = ["train", "--config", T2I_TINY, "--workdir", "w", "--config.train.steps"]
    err = one_line_error(capsys, argv)
    assert err == "error: --config.train.steps has no value; give it as --config.train.steps=VALUE"


def test_usage_errors_are_one_line(capsys):
    assert "the following arguments are required: --workdir" in one_line_error(
        capsys, ["train", "--config", T2I_TINY]
    )
    assert "invalid choice: 'fly'" in one_line_error(capsys, ["fly"])


def test_console_command_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxdiff.cli",
            "train",
            "--config",
            T2I_TINY,
            "--workdir",
            str(tmp_path / "w"),
            "--config.train.steps=-1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: train.steps must be > 0, got -1"


GMM_TINY = f"{CONFIGS / 'compare_samplers_gmm.py'}:tiny"
SHAPES_COMPARE_TINY = f"{CONFIGS / 'compare_samplers_shapes.py'}:tiny"
FLOW_COMPARE_TINY = f"{CONFIGS / 'compare_samplers_flow.py'}:tiny"


@pytest.mark.parametrize(
    ("config", "twin_line"),
    [
        (GMM_TINY, "| EulerDiscreteScheduler:timestep_spacing=trailing | euler | 1.000 | 1.000 |"),
        (FLOW_COMPARE_TINY, "| FlowMatchHeunDiscreteScheduler:shift=3.0 | flow_heun | 1.000 |"),
    ],
    ids=["vp", "flow"],
)
def test_compare_samplers_on_mixtures_writes_csv_report_and_plot(config, twin_line, tmp_path):
    """The flow config starts at t = 1 and runs diffusers' flow scheduler beside its twin."""
    out = tmp_path / "cmp"
    args = ["compare-samplers", "--config", config, "--out", str(out), "--no-progress"]
    assert main([*args, "--config.num_samples=32", "--config.mixtures.sharp.dim=2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "error_vs_nfe.png",
        "report.md",
        "results.csv",
    ]
    report = (out / "report.md").read_text()
    assert "## smooth" in report and "## sharp" in report and "Noise floor" in report
    assert "Bend of the exact trajectories" in report and twin_line in report


def test_compare_samplers_on_a_trained_model(t2i_workdir, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare-samplers", "--config", SHAPES_COMPARE_TINY, "--out", str(out)]
    assert main([*args, "--workdir", str(t2i_workdir), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "| heun (karras) |" in report and "adherence (all)" in report


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", GMM_TINY, "--workdir", "w"], "compares samplers on mixtures; drop --workdir"),
        (["--config", SHAPES_COMPARE_TINY], "compares samplers on a model; give --workdir"),
        (["--config", GMM_TINY, "--config.samplers=('eulr',)"], "unknown sampler 'eulr'"),
        (
            [
                "--config",
                GMM_TINY,
                "--config.nfe=(1,)",
                "--config.samplers=('heun',)",
                "--config.schedules=('discrete:steps_offset=1,final_sigma=sigma_min',)",
            ],
            "NFE=1 is too small for sampler 'heun': one step makes 2 denoiser calls",
        ),
        (["--config", GMM_TINY, "--config.problem=cats"], "has problem='cats'"),
    ],
)
def test_bad_compare_input_is_one_line(capsys, tmp_path, extra, message):
    err = one_line_error(capsys, ["compare-samplers", "--out", str(tmp_path / "o"), *extra])
    assert message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config.samplers=('dpm_adaptive',)"], "'dpm_adaptive' picks its own steps"),
        (["--config.prompts=0"], "prompts=0 must be in [1, 90]"),
        (["--config.schedules=('wavy',)"], "schedule='wavy' is not supported; accepted: karras"),
    ],
)
def test_bad_model_compare_input_is_one_line(capsys, tmp_path, t2i_workdir, extra, message):
    args = ["compare-samplers", "--config", SHAPES_COMPARE_TINY, "--workdir", str(t2i_workdir)]
    err = one_line_error(capsys, [*args, "--out", str(tmp_path / "o"), *extra])
    assert message in err
    assert not (tmp_path / "o").exists()
