"""The sharded train state: model + optimizer, EMA, and their shardings.

``nnx.eval_shape`` gives the abstract state; the config's logical-axis rules give each array's
sharding; the state is then created and moved onto those shardings, or restored from a checkpoint
straight into them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxdiff import parallel
from jaxdiff.models.abstract import eval_shape
from jaxdiff.train.tasks import Task


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """What the train state looks like: its graph, its abstract arrays and their shardings."""

    graphdef: nnx.GraphDef  # of (model, optimizer)
    abstract: nnx.State  # (model, optimizer) state of ShapeDtypeStructs
    abstract_ema: nnx.State  # the trainable parameters
    shardings: nnx.State  # NamedSharding per array of ``abstract``
    ema_shardings: nnx.State
    rules: dict  # the sharding rules they come from (``parallel.check_rules``)


def build_layout(
    task: Task, optimizer: optax.GradientTransformation, mesh: Mesh, rules: dict
) -> StateLayout:
    def create():
        model = task.build_model(nnx.Rngs(0))
        return model, nnx.Optimizer(model, optimizer, wrt=task.trainable)

    model, opt = eval_shape(create)
    graphdef, abstract = nnx.split((model, opt))
    abstract_ema = nnx.state(model, task.trainable)
    return StateLayout(
        graphdef=graphdef,
        abstract=abstract,
        abstract_ema=abstract_ema,
        shardings=parallel.state_shardings(abstract, mesh, rules),
        ema_shardings=parallel.state_shardings(abstract_ema, mesh, rules),
        rules=rules,
    )


def initial_state(
    task: Task, optimizer: optax.GradientTransformation, layout: StateLayout, key: jax.Array
) -> tuple[nnx.State, nnx.State]:
    """A fresh (model + optimizer) state and its EMA (a copy of the trainable weights).

    The weights are drawn on the default device, op by op (each op compiled once per process and
    shape), and moved to their shardings at once; the optimizer's moments are then created beside
    them, already sharded, so no device ever holds more than one whole copy of the weights.
    """
    model = task.build_model(nnx.Rngs(key))
    nnx.update(model, place(nnx.state(model), layout.shardings[0]))
    opt = nnx.Optimizer(model, optimizer, wrt=task.trainable)
    state = place(nnx.state((model, opt)), layout.shardings)
    ema = place(nnx.state(model, task.trainable), layout.ema_shardings)
    return state, jax.tree.map(jnp.copy, ema)


def place(tree: Any, shardings: Any) -> Any:
    """Puts every array of ``tree`` on its sharding; host-local arrays (those a set-up step wrote
    on one device) go through host memory, which every process holds the same."""

    def put(x: jax.Array, sharding: jax.sharding.Sharding) -> jax.Array:
        if jax.process_count() == 1 or not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree, shardings)


def as_targets(abstract: nnx.State, shardings: nnx.State) -> Any:
    """``ShapeDtypeStruct``s with shardings: where a checkpoint is restored into."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def per_device_bytes(abstract: Any, shardings: Any) -> int:
    """The bytes the most loaded device holds of ``abstract`` under ``shardings`` (no
    allocation: shard shapes from the shardings)."""
    per_device: dict[Any, int] = {}
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
        size = math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
        for device in s.device_set:
            per_device[device] = per_device.get(device, 0) + size
    return max(per_device.values())


def total_bytes(abstract: Any) -> int:
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(abstract))
