"""A DiT training step sharded over data x fsdp x tensor equals the same step on one device: the
attention and feed-forward widths split over `tensor`, the other weights over `fsdp`, the batch
over `data` x `fsdp` (fp32, 3 steps of SGD on a denoising loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from closeness import assert_close
from flax import nnx
from random_weights import random_model
from reference_models import DIT_CONFIG

from jaxdiff import parallel
from jaxdiff.models import DiT

STEPS = 3
BATCH = 8
RULES = {"embed": "fsdp", "conv_in": "fsdp", "heads": "tensor", "mlp": "tensor"}


def batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.RandomState(0)
    return [
        {
            "x": rng.randn(BATCH, 8, 8, 4).astype(np.float32),
            "t": rng.uniform(0, 1000, BATCH).astype(np.float32),
            "labels": rng.randint(0, 1001, BATCH).astype(np.int32),
            "target": rng.randn(BATCH, 8, 8, 8).astype(np.float32),
        }
        for _ in range(STEPS)
    ]


def train(mesh_shape: dict, devices: list, steps: int = STEPS) -> list:
    """The parameters after `STEPS` steps, as (path, array) pairs."""
    model = random_model(lambda: DiT(**DIT_CONFIG, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    # SGD, not Adam: Adam scales the rounding noise of the key biases' gradient (attention is
    # invariant to them) to full-size steps.
    optimizer = optax.sgd(0.1)
    mesh = parallel.make_mesh(mesh_shape, devices)
    params = jax.device_put(
        params, parallel.state_shardings(params, mesh, parallel.check_rules(RULES))
    )
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(params):
            out = nnx.merge(graphdef, params)(batch["x"], batch["t"], batch["labels"])
            return jnp.mean(jnp.square(out - batch["target"]))

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rows = parallel.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        for batch in batches()[:steps]:
            params, opt_state = step(params, opt_state, jax.device_put(batch, rows))
    flat = nnx.to_flat_state(jax.device_get(params))
    return [(path, np.asarray(v.get_value())) for path, v in flat]


def test_dit_step_on_data_fsdp_tensor_equals_one_device():
    one = train({"data": 1}, jax.devices()[:1])
    assert_close(train({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8]), one)
    # One step fewer is far outside the tolerance: the comparison can fail.
    fewer = np.concatenate([np.ravel(a) for _, a in train({"data": 1}, jax.devices()[:1], 2)])
    reference = np.concatenate([np.ravel(a) for _, a in one])
    assert np.linalg.norm(fewer - reference) > 100 * 1e-5 * np.linalg.norm(reference)
