"""A transformer training step (DiT, MMDiT) sharded over data x fsdp x tensor equals the same step
on one device: the attention and feed-forward widths split over `tensor`, the other weights over
`fsdp`, the batch over `data` x `fsdp`, and the activations laid out to match, with the residual
stream's tokens split over `tensor` too (fp32, 3 steps of SGD on a denoising loss)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from closeness import assert_close
from flax import nnx
from random_weights import random_model
from reference_models import DIT_CONFIG, MMDIT_CONFIG

from jaxdiff import parallel
from jaxdiff.models import DiT, MMDiT

STEPS = 3
BATCH = 8
RULES = {"embed": "fsdp", "conv_in": "fsdp", "heads": "tensor", "mlp": "tensor", "seq": "tensor"}


def conditioning(name: str, rng: np.random.RandomState) -> tuple[np.ndarray, ...]:
    """The model's inputs after x and t: class labels (the null class among them), or the text
    tokens and the pooled text."""
    if name == "dit":
        return (rng.randint(0, 1001, BATCH).astype(np.int32),)
    tokens = rng.randn(BATCH, 5, MMDIT_CONFIG["joint_attention_dim"]).astype(np.float32)
    return tokens, rng.randn(BATCH, MMDIT_CONFIG["pooled_projection_dim"]).astype(np.float32)


MODELS = {"dit": (DiT, DIT_CONFIG, 8), "mmdit": (MMDiT, MMDIT_CONFIG, 4)}  # output channels


def batches(name: str) -> list[dict]:
    rng = np.random.RandomState(0)
    return [
        {
            "x": rng.randn(BATCH, 8, 8, 4).astype(np.float32),
            "t": rng.uniform(0, 1000, BATCH).astype(np.float32),
            "conditioning": conditioning(name, rng),
            "target": rng.randn(BATCH, 8, 8, MODELS[name][2]).astype(np.float32),
        }
        for _ in range(STEPS)
    ]


def train(name: str, mesh_shape: dict, devices: list, steps: int = STEPS) -> tuple[list, str]:
    """The parameters after `STEPS` steps, as (path, array) pairs, and the step's StableHLO."""
    cls, config, _ = MODELS[name]
    model = random_model(lambda: cls(**config, rngs=nnx.Rngs(0)))
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)  # MMDiT: its position table
    # SGD, not Adam: Adam scales the rounding noise of the key biases' gradient (attention is
    # invariant to them) to full-size steps.
    optimizer = optax.sgd(0.1)
    mesh = parallel.make_mesh(mesh_shape, devices)
    rules = parallel.check_rules(RULES)
    params = jax.device_put(params, parallel.state_shardings(params, mesh, rules))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(params):
            network = nnx.merge(graphdef, params, buffers)
            out = network(batch["x"], batch["t"], *batch["conditioning"])
            return jnp.mean(jnp.square(out - batch["target"]))

        with parallel.activation_sharding(mesh, rules):
            grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rows = parallel.batch_sharding(mesh)
    data = [jax.device_put(batch, rows) for batch in batches(name)[:steps]]
    with jax.set_mesh(mesh):
        hlo = step.lower(params, opt_state, data[0]).as_text()
        for batch in data:
            params, opt_state = step(params, opt_state, batch)
    flat = nnx.to_flat_state(jax.device_get(params))
    return [(path, np.asarray(v.get_value())) for path, v in flat], hlo


@pytest.mark.parametrize("name", MODELS)
def test_step_on_data_fsdp_tensor_equals_one_device(name):
    one, _ = train(name, {"data": 1}, jax.devices()[:1])
    sharded, hlo = train(name, {"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    assert_close(sharded, one)
    # The activations are laid out as named: batch over data x fsdp, the attention heads and the
    # feed-forward width over tensor, and the residual stream's tokens over tensor.
    constraints = re.findall(r"sdy.sharding_constraint .*?<@mesh, (\[.*?\])>", hlo)
    for layout in ('[{"data", "fsdp"}, {}, {"tensor"}, {}]', '[{"data", "fsdp"}, {}, {"tensor"}]'):
        assert layout in constraints, (layout, set(constraints))
    assert '[{"data", "fsdp"}, {"tensor"}, {}]' in constraints
    # One step fewer is far outside the tolerance: the comparison can fail.
    fewer, _ = train(name, {"data": 1}, jax.devices()[:1], STEPS - 1)
    fewer = np.concatenate([np.ravel(a) for _, a in fewer])
    reference = np.concatenate([np.ravel(a) for _, a in one])
    assert np.linalg.norm(fewer - reference) > 100 * 1e-5 * np.linalg.norm(reference)
