"""Fixtures for the model tests: fast random weights, parameter counts, logical-axis checks."""

from collections.abc import Callable

import jax
import numpy as np
import pytest
import random_weights
from flax import nnx


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
    return random_weights.random_model


@pytest.fixture(scope="session")
def count_params() -> Callable:
    return _count_params
