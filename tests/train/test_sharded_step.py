"""The sharded training step equals the single-device step (fp32, 3 steps, 8 CPU devices)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from closeness import assert_close
from flax import nnx

from jaxdiff import parallel
from jaxdiff.configuration import load_config
from jaxdiff.train.optim import make_optimizer
from jaxdiff.train.state import build_layout, initial_state, place
from jaxdiff.train.step import initial_health
from jaxdiff.train.tasks import make_task
from jaxdiff.train.trainer import compile_step

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes_t2i.py"
STEPS = 3
# The tiny text-to-image run with a one-level UNet: every kind of layer, little to compile.
ONE_LEVEL = (
    "model.unet.block_out_channels=(16,)",
    "model.unet.down_block_types=('CrossAttnDownBlock2D',)",
    "model.unet.up_block_types=('CrossAttnUpBlock2D',)",
)


def make_config(micro_batches: int = 1, rules: dict | None = None):
    overrides = [f"sharding_rules.{name}={axis}" for name, axis in (rules or {}).items()]
    return load_config(
        f"{CONFIG}:tiny", [*ONE_LEVEL, f"train.micro_batches={micro_batches}", *overrides]
    )


@pytest.fixture(scope="module")
def start() -> tuple:
    """The initial state and EMA on the host: every run starts from these."""
    config = make_config()
    task = make_task(config)
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    optimizer = make_optimizer(config.train)
    layout = build_layout(task, optimizer, mesh, parallel.check_rules(config.sharding_rules))
    return jax.device_get(initial_state(task, optimizer, layout, jax.random.key(0)))


def run(start: tuple, mesh_shape: dict, micro_batches: int = 1, devices=None, rules=None) -> list:
    """The trainable parameters after ``STEPS`` steps."""
    config = make_config(micro_batches, rules)
    task = make_task(config)
    mesh = parallel.make_mesh(mesh_shape, devices)
    rules = parallel.check_rules(config.sharding_rules)
    layout = build_layout(task, make_optimizer(config.train), mesh, rules)
    state, ema = place(start, (layout.shardings, layout.ema_shardings))
    step = compile_step(task, layout, mesh, config.train)
    health = jax.device_put(initial_health(), parallel.replicated(mesh))
    batch_sharding = parallel.batch_sharding(mesh)
    size = config.train.batch_size
    rows = parallel.process_rows(batch_sharding, size)
    root = jax.random.key(1)
    for i in range(STEPS):
        batch = parallel.shard_batch(task.batch(i * size + rows), batch_sharding, size)
        if i == 0 and mesh.size > 1:  # the activations are laid out in the compiled step
            hlo = step.lower(state, ema, health, batch, root, jnp.int32(i)).as_text()
            assert "sdy.sharding_constraint" in hlo
        state, ema, health, _ = step(state, ema, health, batch, root, jnp.int32(i))
    assert int(health["nonfinite_steps"]) == 0
    model, _ = nnx.merge(layout.graphdef, state)
    flat = nnx.to_flat_state(jax.device_get(nnx.state(model, task.trainable)))
    return [(path, v.get_value()) for path, v in flat]


@pytest.fixture(scope="module")
def single_device(start) -> list:
    return run(start, {"data": 1}, devices=jax.devices()[:1])


@pytest.mark.parametrize(
    "mesh",
    [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 4}],
    ids=["data8", "fsdp8", "data2xfsdp4"],
)
def test_sharded_step_equals_single_device(start, mesh, single_device):
    assert_close(run(start, mesh), single_device)


def test_tensor_parallel_step_equals_single_device(start, single_device):
    """Attention and feed-forward widths split over ``tensor``, the other weights over ``fsdp``,
    the batch over ``data`` x ``fsdp``."""
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    assert_close(run(start, mesh, rules={"heads": "tensor", "mlp": "tensor"}), single_device)


def test_accumulation_equals_the_whole_batch(start, single_device):
    """Four micro-batches of 2 (on 2 data-parallel devices) against one batch of 8."""
    params = run(start, {"data": 2}, micro_batches=4, devices=jax.devices()[:2])
    assert_close(params, single_device)
