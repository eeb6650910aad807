"""Modules with random weights drawn on the host, without compiling their initialisers."""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.layers import Buffer


def random_model(factory: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """Builds `factory()` abstractly and fills it with numpy random weights.

    Skips the per-shape XLA compilation of the real initializers (seconds per model on a small
    CPU); weights are fan-in scaled normals, norm scales near 1, biases and shifts near 0, fixed
    tables (`Buffer`s, such as SD3's positions) normals of scale 0.1.
    """
    model = eval_shape(factory)
    rng = np.random.RandomState(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, Buffer)):
        var.set_value(jnp.asarray(0.1 * rng.randn(*var.shape), var.dtype))
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
