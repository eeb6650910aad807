"""Two processes on 127.0.0.1 (4 CPU devices each, gloo collectives) train exactly what one
process with 8 devices does: same mesh, each process reading only its own half of every batch and
writing its own checkpoint shards."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
from closeness import assert_close
from flax import nnx

from jaxdiff.configuration import load_config
from jaxdiff.train.trainer import load_trained, train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = f"{ROOT / 'configs' / 'shapes_vae.py'}:tiny"
OVERRIDES = (
    "train.steps=3",
    "train.checkpoint_every=3",
    "train.preview_every=3",
    "mesh.data=2",
    "mesh.fsdp=4",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_weights(workdir: Path) -> list:
    _, model = load_trained(workdir, use_ema=False)
    return [
        (path, v.get_value()) for path, v in nnx.to_flat_state(jax.device_get(nnx.state(model)))
    ]


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    port = free_port()
    arguments = ["train", "--config", CONFIG, "--workdir", str(two), "--no-progress"]
    arguments += [f"--config.{o}" for o in OVERRIDES]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxdiff.cli", *arguments],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(index),
            },
        )
        for index in range(2)
    ]
    train(load_config(CONFIG, list(OVERRIDES)), one, progress=False)
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
    assert_close(flat_weights(two), flat_weights(one))
    # process 0 alone writes logs and previews
    logged = [json.loads(line)["step"] for line in (two / "metrics.jsonl").open()]
    assert logged[-1] == 3 and logged == sorted(set(logged))
    assert (two / "samples" / "step_0000003.png").is_file()
