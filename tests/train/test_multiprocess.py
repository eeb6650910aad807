"""Two processes on 127.0.0.1 (4 CPU devices each, gloo collectives) train exactly what one
process with 8 devices does: same mesh, each process reading only its own half of every batch and
writing its own checkpoint shards."""

import json
from pathlib import Path

import jax
from closeness import assert_close
from flax import nnx
from processes import launch, wait

from jaxdiff.configuration import load_config
from jaxdiff.train.tasks import load_trained
from jaxdiff.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = f"{ROOT / 'configs' / 'shapes_vae.py'}:tiny"
OVERRIDES = (
    "train.steps=3",
    "train.checkpoint_every=3",
    "train.preview_every=3",
    "mesh.data=2",
    "mesh.fsdp=4",
)


def flat_weights(workdir: Path) -> list:
    _, model = load_trained(workdir, use_ema=False)
    return [
        (path, v.get_value()) for path, v in nnx.to_flat_state(jax.device_get(nnx.state(model)))
    ]


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    arguments = ["train", "--config", CONFIG, "--workdir", str(two), "--no-progress"]
    processes = launch([*arguments, *(f"--config.{o}" for o in OVERRIDES)])
    train(load_config(CONFIG, list(OVERRIDES)), one, progress=False)
    wait(processes)
    assert_close(flat_weights(two), flat_weights(one))
    # process 0 alone writes logs and previews
    logged = [json.loads(line)["step"] for line in (two / "metrics.jsonl").open()]
    assert logged[-1] == 3 and logged == sorted(set(logged))
    assert (two / "samples" / "step_0000003.png").is_file()
