"""Fixtures for the model tests: fast random weights, parameter counts, logical-axis checks."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models.abstract import eval_shape


def _random_model(factory: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """Builds `factory()` abstractly and fills it with numpy random weights.

    Skips the per-shape XLA compilation of the real initializers (seconds per model on a small
    CPU); weights are fan-in scaled normals, norm scales near 1, biases and shifts near 0.
    """
    model = eval_shape(factory)
    rng = np.random.RandomState(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = var.shape
        if path[-1] == "scale":
            value = 1 + 0.1 * rng.randn(*shape)
        elif path[-1] == "bias":
            value = 0.1 * rng.randn(*shape)
        elif path[-1] == "embedding":
            value = 0.02 * rng.randn(*shape)
        else:
            value = rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
        var.set_value(jnp.asarray(value, var.dtype))
    return model


def _count_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _check_logical_axes(model: nnx.Module) -> None:
    """Every parameter names each of its axes with a `LOGICAL_AXES` name or None, no name twice."""
    from jaxdiff.models import LOGICAL_AXES

    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == len(var.shape), (path, axes, var.shape)
        named = [a for a in axes if a is not None]
        assert set(named) <= set(LOGICAL_AXES), (path, axes)
        assert len(named) == len(set(named)), (path, axes)


@pytest.fixture(scope="session")
def check_logical_axes() -> Callable:
    return _check_logical_axes


@pytest.fixture(scope="session")
def random_model() -> Callable:
    return _random_model


@pytest.fixture(scope="session")
def count_params() -> Callable:
    return _count_params
