"""LoRA dropout: only inside `dropout_keys` (training), each row's masks from its own key, the
kept inputs scaled so that the adapter's output keeps its mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models import lora


def adapted(kind: str, rate: float) -> nnx.Module:
    """A Linear (8 -> 6) or 3x3 Conv (8 -> 6 channels) with one rank-3 adapter (large, so that
    the adapter's share of the output is visible) dropping its input at `rate`."""
    rngs = nnx.Rngs(0)
    base = nnx.Linear(8, 6, rngs=rngs) if kind == "linear" else nnx.Conv(8, 6, (3, 3), rngs=rngs)
    model = nnx.Sequential(base)
    down, up, scale = lora.new_adapter(base, 3, 1.0, jax.random.key(1))
    up = jax.random.normal(jax.random.key(2), up.shape)
    lora.add_adapter(model, "layers.0", "a", down, up, scale, dropout=rate)
    return model


def inputs(kind: str, rows: int) -> jax.Array:
    shape = (rows, 8) if kind == "linear" else (rows, 5, 5, 8)
    return jax.random.normal(jax.random.key(3), shape)


def row_keys(rows: int) -> jax.Array:
    return jax.random.split(jax.random.key(4), rows)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dropout_only_in_training_and_each_row_from_its_own_key(kind):
    model, x, keys = adapted(kind, 0.5), inputs(kind, 4), row_keys(4)
    plain = model(x)
    np.testing.assert_array_equal(adapted(kind, 0.0)(x), plain)  # outside: nothing dropped
    with lora.dropout_keys(keys):
        dropped = model(x)
    assert np.abs(dropped - plain).max() > 0.1
    for row in range(4):  # a row alone, with its key, has the same masks
        with lora.dropout_keys(keys[row : row + 1]):
            alone = model(x[row : row + 1])
        np.testing.assert_allclose(alone[0], dropped[row], rtol=1e-6, atol=1e-6)
    with lora.dropout_keys(keys):
        np.testing.assert_array_equal(adapted(kind, 0.0)(x), plain)  # rate 0: nothing dropped
        with pytest.raises(ValueError, match="LoRA dropout on 2 rows with 4 keys"):
            model(x[:2])


def test_dropout_keeps_the_mean_output():
    """Inverted dropout: over many rows, the mean output is the undropped one (within 4 standard
    errors of the mean)."""
    model, rows = adapted("linear", 0.3), 20_000
    x = jnp.broadcast_to(inputs("linear", 1), (rows, 8))
    with lora.dropout_keys(row_keys(rows)):
        dropped = np.asarray(model(x))
    plain = np.asarray(model(x[:1]))[0]
    standard_error = dropped.std(axis=0) / np.sqrt(rows)
    assert np.all(np.abs(dropped.mean(axis=0) - plain) < 4 * standard_error + 1e-6)
    assert np.all(dropped.std(axis=0) > 0.01)
