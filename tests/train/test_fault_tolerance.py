"""Never lose work: kill -9 at any step, kill during a save, SIGTERM, Ctrl-C (once or twice), an
unreadable latest checkpoint, non-finite steps, a checkpoint of another model. Resumed runs must
end bitwise equal to the uninterrupted one."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.checkpoint import Checkpointer
from jaxdiff.configuration import load_config
from jaxdiff.errors import UserError
from jaxdiff.train import vae_task
from jaxdiff.train.tasks import load_trained
from jaxdiff.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = f"{ROOT / 'configs' / 'shapes_vae.py'}:tiny"
STEPS = 8
KILL_SEED = 0  # picks the step at which a run is killed
OVERRIDES = (
    f"train.steps={STEPS}",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=3",
    "train.log_every=1",
    "train.preview_every=0",
)


def config(*extra: str):
    return load_config(CONFIG, [*OVERRIDES, *extra])


def weights(workdir: Path) -> list[np.ndarray]:
    """The parameters, then the EMA parameters, of a trained workdir."""
    return [
        np.asarray(a)
        for use_ema in (False, True)
        for a in jax.tree.leaves(nnx.state(load_trained(workdir, use_ema)[1], nnx.Param))
    ]


def assert_bitwise_equal(a: list[np.ndarray], b: list[np.ndarray], context: str) -> None:
    """Equal bit for bit; a failure message starts with `context`."""
    assert len(a) == len(b), f"{context}: {len(a)} arrays, expected {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"{context}: array {i}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train(config(), workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def expected(uninterrupted) -> list[np.ndarray]:
    """The uninterrupted run's weights, which every interrupted run must end with."""
    return weights(uninterrupted)


def launch(workdir: Path, *command: str) -> subprocess.Popen:
    """``jaxdiff train`` of the test config in another process (``command``: how to start it)."""
    arguments = ["train", "--config", CONFIG, "--workdir", str(workdir), "--no-progress"]
    arguments += [f"--config.{o}" for o in OVERRIDES]
    return subprocess.Popen(
        [sys.executable, *command, *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def wait_for_step(process: subprocess.Popen, workdir: Path, step: int) -> None:
    """Until the process has logged ``step`` (its checkpoint may still be in flight)."""
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        if metrics.is_file():
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            if lines and lines[-1]["step"] >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def read_until(process: subprocess.Popen, start: str, seen: list[str]) -> None:
    """Appends the process's output lines to ``seen`` up to one that starts with ``start`` (other
    lines, such as absl's warnings, may come first)."""
    while not (seen and seen[-1].startswith(start)):
        seen.append(process.stdout.readline())
        assert seen[-1], "".join(seen)  # the process is still running


def test_kill_9_at_a_random_step_then_restart(tmp_path, expected):
    step = random.Random(KILL_SEED).randint(2, STEPS - 2)
    process = launch(tmp_path, "-m", "jaxdiff.cli")
    wait_for_step(process, tmp_path, step)
    process.kill()
    process.wait()
    train(config(), tmp_path, progress=False)
    assert_bitwise_equal(weights(tmp_path), expected, f"killed at step {step}")


def test_kill_9_during_a_save_resumes_from_the_previous_checkpoint(tmp_path, expected):
    process = launch(tmp_path, str(ROOT / "tests" / "train" / "interrupted_save.py"), "4")
    read_until(process, "saving step 4", [])
    process.kill()
    process.wait()
    checkpoints = tmp_path / "checkpoints"
    assert not (checkpoints / "4").exists()
    assert any(".orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())
    train(config(), tmp_path, progress=False)
    assert not any(".orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())
    assert_bitwise_equal(weights(tmp_path), expected, "killed while saving step 4")


def saved_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigterm_saves_and_exits_cleanly(tmp_path, expected, capsys):
    process = launch(tmp_path, "-m", "jaxdiff.cli")
    wait_for_step(process, tmp_path, 2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    stopped = int(output.split("stopped by SIGTERM after step ")[1].split(" ")[0])
    assert 2 <= stopped < STEPS
    checkpoint = tmp_path / "checkpoints" / str(stopped)
    assert f"after step {stopped} of {STEPS}; checkpoint saved in {checkpoint}; rerun" in output
    assert saved_steps(tmp_path)[-1] == stopped
    train(config(), tmp_path, progress=False)
    assert f"resuming from step {stopped} of {STEPS} (checkpoint {checkpoint})" in (
        capsys.readouterr().out
    )
    assert_bitwise_equal(weights(tmp_path), expected, f"stopped by SIGTERM after step {stopped}")


def test_ctrl_c_saves_and_a_second_ctrl_c_stops_at_once(tmp_path, expected):
    """Ctrl-C while the first step compiles: the step finishes, is saved, and the run exits with
    130 and one line saying so. The rerun resumes there and is held inside its save of step 4;
    Ctrl-C twice ends it at once, and the next run resumes from the newest complete checkpoint
    to the uninterrupted run's weights."""
    process = launch(tmp_path, "-m", "jaxdiff.cli")
    deadline = time.monotonic() + 300
    while not (tmp_path / "config.json").is_file():  # written just before the step compiles
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, output
    checkpoint = tmp_path / "checkpoints" / "1"
    assert output.splitlines()[-1] == (
        f"stopped by Ctrl-C after step 1 of {STEPS}; checkpoint saved in {checkpoint}; "
        "rerun the same command to resume"
    )
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert saved_steps(tmp_path) == [1]

    process = launch(tmp_path, str(ROOT / "tests" / "train" / "interrupted_save.py"), "4")
    seen: list[str] = []
    read_until(process, "saving step 4", seen)  # from here the run waits on that save forever
    process.send_signal(signal.SIGINT)
    read_until(process, "Ctrl-C: stopping after this step", seen)  # noticed
    process.send_signal(signal.SIGINT)  # while the run still waits to save
    output = "".join(seen) + process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signal.SIGINT, output
    assert f"resuming from step 1 of {STEPS} (checkpoint {checkpoint})" in output
    assert output.splitlines()[-1].startswith("Ctrl-C again: stopped at once"), output
    assert "Traceback" not in output, output
    assert saved_steps(tmp_path) == [1, 2, 3]  # step 4's save never completed
    train(config(), tmp_path, progress=False)
    assert_bitwise_equal(weights(tmp_path), expected, "stopped by Ctrl-C twice")


def test_unreadable_latest_checkpoint_falls_back_with_a_warning(
    tmp_path, uninterrupted, expected, caplog
):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    for path in (workdir / "checkpoints" / str(STEPS) / "model").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")  # a damaged disk
    with caplog.at_level(logging.WARNING, logger="jaxdiff.checkpoint"):
        train(config(), workdir, progress=False)
    assert f"checkpoint step {STEPS} in" in caplog.text
    assert "cannot be read" in caplog.text and f"using step {STEPS - 1} instead" in caplog.text
    assert_bitwise_equal(weights(workdir), expected, f"resumed from step {STEPS - 1}")


def poison(position: int, monkeypatch) -> None:
    """The example at data position ``position`` becomes NaN."""
    batch = vae_task.VAETask.batch

    def poisoned(self, indices):
        out = batch(self, indices)
        out["image"][indices == position] = np.nan
        return out

    monkeypatch.setattr(vae_task.VAETask, "batch", poisoned)


def test_nonfinite_step_stops_the_run_with_its_number(tmp_path, monkeypatch):
    poison(2 * 8 + 3, monkeypatch)  # in step 3's batch of 8
    with pytest.raises(UserError, match=r"not finite at step 3; checkpoint step \d is kept"):
        train(config("train.steps=4"), tmp_path, progress=False)
    _, model = load_trained(tmp_path, use_ema=False)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(nnx.state(model)))


def test_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    poison(2 * 8 + 3, monkeypatch)
    metrics = train(config("train.steps=4", "train.on_nonfinite=skip"), tmp_path, progress=False)
    assert metrics["nonfinite_steps"] == 1
    _, model = load_trained(tmp_path, use_ema=False)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(nnx.state(model)))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        # a host array is read in the shape saved; a device array's template is refused by orbax
        (
            {"kernel": np.zeros((3, 3, 4, 16), np.float32)},
            r"model/conv/kernel has shape \(3, 3, 4, 8\), this model \(3, 3, 4, 16\)",
        ),
        (
            {"kernel": jax.numpy.zeros((3, 3, 4, 16))},
            r"model/conv/kernel has shape \(3, 3, 4, 8\), this model \(3, 3, 4, 16\)",
        ),
        (
            {"kernel": np.zeros((3, 3, 4, 8), np.float32), "bias": np.zeros(8, np.float32)},
            r"it has no model/conv/bias",
        ),
    ],
    ids=["host-array", "device-array", "missing-array"],
)
def test_checkpoint_of_another_model_names_the_array(tmp_path, template, message):
    writer = Checkpointer(tmp_path, ["model"])
    writer.save(1, {"model": {"conv": {"kernel": np.zeros((3, 3, 4, 8), np.float32)}}}, {})
    writer.close()
    reader = Checkpointer(tmp_path, ["model"])
    with pytest.raises(
        UserError, match=r"step 1 in .* was written by a different model: " + message
    ):
        reader.restore_latest({"model": {"conv": template}})
    reader.close()


def test_python_scalars_restore_beside_arrays(tmp_path):
    tree = {"kernel": np.ones((2, 3), np.float32), "count": 3}
    writer = Checkpointer(tmp_path, ["model"])
    writer.save(1, {"model": tree}, {})
    writer.close()
    reader = Checkpointer(tmp_path, ["model"])
    _, restored = reader.restore_latest({"model": tree})
    reader.close()
    np.testing.assert_array_equal(restored["model"]["kernel"], tree["kernel"])
    assert restored["model"]["count"] == 3
