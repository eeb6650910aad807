"""Training at scale, measured: FSDP memory of SD-1.5's UNet, step-time ratios of the demo model.

1. Bytes per device of the SD-1.5 UNet's parameters + AdamW moments + EMA under FSDP over 8
   devices, from the shardings of the abstract state (nothing is allocated), against an even
   split of the total.
2. Step time of the demo's latent text-to-image model (configs/shapes_t2i.py on the autoencoder
   of configs/shapes_vae.py, batch 64): gradient accumulation (4 micro-batches of 16) and bf16
   compute, each against the plain fp32 step on the same machine in the same run; medians over
   repeats.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/train_scaling.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff import parallel
from jaxdiff.configuration import load_config
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.unet import UNET_PRESETS, UNet
from jaxdiff.train.optim import make_optimizer
from jaxdiff.train.state import build_layout, initial_state, per_device_bytes, total_bytes
from jaxdiff.train.step import initial_health
from jaxdiff.train.tasks import make_task
from jaxdiff.train.trainer import compile_step, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def fsdp_memory(devices: int = 8) -> dict:
    mesh = parallel.make_mesh({"fsdp": devices}, jax.devices()[:devices])

    def create():
        unet = UNet(**UNET_PRESETS["sd15"], rngs=nnx.Rngs(0))
        return unet, nnx.Optimizer(unet, optax.adamw(1e-4), wrt=nnx.Param)

    unet, optimizer = eval_shape(create)
    abstract = (nnx.state((unet, optimizer)), nnx.state(unet, nnx.Param))
    rules = parallel.check_rules(parallel.FSDP_RULES)
    shardings = tuple(parallel.state_shardings(s, mesh, rules) for s in abstract)
    total, per_device = total_bytes(abstract), per_device_bytes(abstract, shardings)
    return {
        "total_GB": total / 1e9,
        "per_device_GB": per_device / 1e9,
        "per_device_over_even_split": per_device / (total / devices),
    }


def step_seconds(config, devices: int, repeats: int, unroll: bool | None = None) -> float:
    """Median seconds of one compiled train step (after two warm-up steps)."""
    task = make_task(config)
    mesh = parallel.make_mesh({"data": devices}, jax.devices()[:devices])
    optimizer = make_optimizer(config.train)
    layout = build_layout(task, optimizer, mesh, parallel.check_rules(config.sharding_rules))
    state, ema = initial_state(task, optimizer, layout, jax.random.key(0))
    step = compile_step(task, layout, mesh, config.train, unroll_micro_batches=unroll)
    health = jax.device_put(initial_health(), parallel.replicated(mesh))
    sharding = parallel.batch_sharding(mesh)
    size = config.train.batch_size
    batch = parallel.shard_batch(task.batch(np.arange(size)), sharding, size)
    key = jax.random.key(1)
    times = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        state, ema, health, metrics = step(state, ema, health, batch, key, jnp.int32(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def step_ratios(devices: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as vae_workdir:
        vae = load_config(
            str(CONFIGS / "shapes_vae.py"), ["train.steps=1", "train.preview_every=0"]
        )
        train(vae, vae_workdir, progress=False)  # an autoencoder of the demo's architecture
        base = [f"vae_workdir={vae_workdir}", "train.preview_every=0"]

        def seconds(*overrides: str, unroll: bool | None = None) -> float:
            config = load_config(str(CONFIGS / "shapes_t2i.py"), [*base, *overrides])
            return step_seconds(config, devices, repeats, unroll)

        fp32 = seconds()
        accumulated = seconds("train.micro_batches=4")  # unrolled: the CPU default
        looped = seconds("train.micro_batches=4", unroll=False)
        bf16 = seconds("model.dtype=bfloat16")
    return {
        "fp32_step_s": fp32,
        "accumulation_4x16_over_batch_64": accumulated / fp32,
        "accumulation_4x16_over_batch_64_as_a_loop": looped / fp32,
        "bf16_over_fp32": bf16 / fp32,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="data-parallel devices for timing")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    results = {"fsdp_memory_sd15_unet_8_devices": fsdp_memory()}
    results["demo_step_time"] = step_ratios(args.devices, args.repeats)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
