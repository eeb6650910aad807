"""Device mesh, logical-axis sharding rules, batch sharding and multi-host start-up. No pmap.

The mesh has up to three named axes: ``data`` (pure data parallelism: parameters replicated),
``fsdp`` (data parallelism with parameters, optimizer state and EMA split across it, ZeRO-3 /
fully sharded data parallel) and ``tensor`` (parameters split, batch replicated). Parameters carry
logical axis names (``jaxdiff.models.LOGICAL_AXES``); the config's rules map each name to a mesh
axis or to None. The batch is split along its first axis over ``data`` x ``fsdp``.

Activations carry names too (``jaxdiff.models.layers.constrain``). Within
``activation_sharding`` the batch axis is split over ``data`` x ``fsdp``, and the attention heads,
the feed-forward width and the token positions (``seq``, a name only the rules of activations
use) over the mesh axis their rules give, where it is still free: ``heads`` / ``mlp`` ->
``tensor`` is Megatron-style tensor parallelism, ``seq`` -> ``tensor`` adds sequence parallelism
in the residual stream. Under FSDP rules (``heads`` -> ``fsdp``) the batch already holds ``fsdp``
and the heads stay whole.

A run with several processes (one per host) starts with ``jax.distributed.initialize``; every
process then builds the same global arrays, each supplying only the rows of the batch that its
own devices hold (``jax.make_array_from_process_local_data``).

Sampling and evaluation run on each process's own devices (``local_mesh``): every process takes
its share of the items (``process_share``), and the results are gathered on every process
(``gather_shares``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.errors import UserError
from jaxdiff.models import layers
from jaxdiff.models.layers import LOGICAL_AXES

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")  # the batch is split over these, in this order

FSDP_RULES: dict[str, str | None] = {
    name: "fsdp" if name in ("heads", "mlp", "conv_out", "vocab") else None for name in LOGICAL_AXES
}
"""Fully sharded data parallelism: every weight split along its output-side axis (no parameter
carries two of these names; see ``jaxdiff.models.layers``), norms replicated."""


def axis_sizes(shape: Mapping[str, int], device_count: int) -> dict[str, int]:
    """The mesh axis sizes of ``shape`` (``-1`` fills the rest) over ``device_count`` devices."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise UserError(f"unknown mesh axis {unknown[0]!r}; accepted: {', '.join(MESH_AXES)}")
    sizes = {name: int(shape.get(name, 1)) for name in MESH_AXES}
    described = " x ".join(f"{name}={size}" for name, size in sizes.items())
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise UserError(
            f"mesh {described} is not valid; accepted: positive sizes and at most one -1"
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if device_count % fixed:
            raise UserError(
                f"mesh {described} does not divide the {device_count} devices "
                f"({fixed} does not divide {device_count})"
            )
        sizes[fill[0]] = device_count // fixed
    elif fixed != device_count:
        raise UserError(
            f"mesh {described} has {fixed} devices, but the run has {device_count}; "
            "make the sizes multiply to the device count or set one to -1"
        )
    return sizes


def make_mesh(shape: Mapping[str, int], devices: list[jax.Device] | None = None) -> Mesh:
    """A mesh over ``devices`` (all of them by default) with axes ``data``, ``fsdp``, ``tensor``,
    Auto axis types (shardings propagate through the step; no explicit-sharding annotations)."""
    devices = jax.devices() if devices is None else devices
    sizes = axis_sizes(shape, len(devices))
    return jax.make_mesh(
        tuple(sizes.values()),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


RULE_NAMES: tuple[str, ...] = (*LOGICAL_AXES, "seq")
"""The names sharding rules map: the parameters' logical axes and the activations' ``seq``."""


def check_rules(rules: Mapping[str, str | None]) -> dict[str, str | None]:
    """``rules`` (logical axis name -> mesh axis or None) validated; names not given are None."""
    for name, axis in rules.items():
        if name not in RULE_NAMES:
            raise UserError(
                f"unknown logical axis {name!r} in the sharding rules; "
                f"accepted: {', '.join(RULE_NAMES)}"
            )
        if axis is not None and axis not in MESH_AXES:
            raise UserError(
                f"sharding rule {name} -> {axis!r} names no mesh axis; "
                f"accepted: {', '.join(MESH_AXES)} or None"
            )
    return {name: rules.get(name) for name in RULE_NAMES}


def partition_spec(
    names: tuple[str | None, ...] | None, shape: tuple[int, ...], rules: dict, mesh: Mesh
) -> P:
    """The spec of one array whose axes carry logical ``names``.

    A dimension that its mesh axis does not divide evenly (a 4-channel output convolution on 8
    devices, say), a mesh axis of size 1 and a mesh axis already used by an earlier dimension
    leave that dimension unsplit.
    """
    if not names:
        return P()
    spec: list[str | None] = []
    for name, size in zip(names, shape, strict=True):
        axis = rules[name] if name is not None else None
        if axis is None or mesh.shape[axis] == 1 or size % mesh.shape[axis] or axis in spec:
            axis = None
        spec.append(axis)
    return P(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: dict) -> nnx.State:
    """A ``NamedSharding`` for every Variable of ``state`` (concrete or abstract) from its
    logical axis names; Variables without names (step counters, scalars) are replicated."""

    def sharding(variable: nnx.Variable) -> nnx.Variable:
        names = variable.get_metadata().get("out_sharding")
        spec = partition_spec(names, np.shape(variable.get_raw_value()), rules, mesh)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def activation_sharding(mesh: Mesh, rules: dict) -> contextlib.AbstractContextManager[None]:
    """The context in which a traced step lays out the models' named activations on ``mesh``
    (see the module docstring); ``rules`` as ``check_rules`` returns them."""
    batch_axes = tuple(axis for axis in BATCH_AXES if mesh.shape[axis] > 1)

    def sharding_of(names: layers.Axes, shape: tuple[int, ...]) -> NamedSharding:
        rows = shape[names.index("batch")] if "batch" in names else 0
        split_rows = bool(batch_axes) and rows % math.prod(mesh.shape[a] for a in batch_axes) == 0
        used = set(batch_axes) if split_rows else set()
        spec: list[str | tuple[str, ...] | None] = []
        for name, size in zip(names, shape, strict=True):
            axis = rules[name] if name not in (None, "batch") else None
            if axis is None or axis in used or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
                axis = None
            used.add(axis)
            spec.append(batch_axes if name == "batch" and split_rows else axis)
        return NamedSharding(mesh, P(*spec))

    return layers.activation_sharding(sharding_of)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: ``data`` x ``fsdp``."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch(batch_size: int, mesh: Mesh, micro_batches: int = 1) -> None:
    """Each micro-batch must split evenly over the data-parallel devices."""
    size = data_parallel_size(mesh)
    if batch_size % (micro_batches * size):
        raise UserError(
            f"train.batch_size {batch_size} is not divisible by train.micro_batches "
            f"{micro_batches} x the data-parallel size {size} (data={mesh.shape['data']} x "
            f"fsdp={mesh.shape['fsdp']}); use a multiple of {micro_batches * size}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over ``data`` x ``fsdp``."""
    return NamedSharding(mesh, P(BATCH_AXES))


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
    """The rows of a global batch that this process's devices hold: the only rows it reads."""
    blocks = sharding.addressable_devices_indices_map((batch_size,)).values()
    rows = np.unique(np.concatenate([np.arange(batch_size)[index[0]] for index in blocks]))
    if rows.size and rows[-1] - rows[0] + 1 != rows.size:
        raise UserError(
            "this process's devices hold non-contiguous rows of the batch; "
            "order the mesh devices by process"
        )
    return rows


def shard_batch(
    local: dict[str, np.ndarray], sharding: NamedSharding, batch_size: int
) -> dict[str, jax.Array]:
    """This process's rows of the batch (from ``process_rows``) to global arrays on the mesh."""
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, a, (batch_size, *a.shape[1:])),
        local,
    )


def initialize_distributed() -> None:
    """Joins a multi-process run when the environment describes one.

    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` give the coordinator
    (``host:port``), the number of processes and this process's index; on TPU pods, Slurm and
    other clusters that JAX detects, ``JAXDIFF_DISTRIBUTED=1`` lets JAX find them itself. On CPU
    the processes exchange data through gloo.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address is None and os.environ.get("JAXDIFF_DISTRIBUTED") != "1":
        return
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
    if address is None:
        jax.distributed.initialize()
        return
    try:
        count = int(os.environ["JAX_NUM_PROCESSES"])
        index = int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError):
        raise UserError(
            f"JAX_COORDINATOR_ADDRESS={address} needs JAX_NUM_PROCESSES and JAX_PROCESS_ID "
            "set to integers"
        ) from None
    jax.distributed.initialize(address, num_processes=count, process_id=index)


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ``data`` mesh over this process's devices (``devices``: all of them)."""
    return Mesh(np.asarray(list(devices or jax.local_devices())), ("data",))


def local_replica(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` whole on each device of the local ``mesh``. An array replicated
    over the devices of several processes (a multi-process run's model) gives its local copy."""

    def put(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.sharding.is_fully_replicated:
                raise ValueError(
                    "an array split over several processes has no local copy; replicate it "
                    "first (jax.jit with a replicated out_sharding)"
                )
            leaf = leaf.addressable_data(0)
        return jax.device_put(leaf, NamedSharding(mesh, P()))

    return jax.tree.map(put, tree)


def whole_batches(count: int, mesh: Mesh) -> int:
    """``count`` rounded up to a multiple of the device count of ``mesh``."""
    devices = mesh.devices.size
    return -(-count // devices) * devices


def split_rows(arrays: Mapping[str, Any], mesh: Mesh, size: int | None = None) -> dict[str, Any]:
    """Each array (of each value: an array, a pytree of arrays, or None, which passes through)
    padded to ``size`` rows (default: the next multiple of the device count) by repeating its
    last row, then split by rows over the ``data`` axis."""
    devices = mesh.devices.size
    rows = NamedSharding(mesh, P("data"))

    def put(a: Any) -> Any:
        if a is None:
            return None
        target = size if size is not None else whole_batches(a.shape[0], mesh)
        if target % devices or target < a.shape[0]:
            raise ValueError(f"{target} rows cannot hold {a.shape[0]} over {devices} devices")
        if target > a.shape[0]:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], target - a.shape[0], axis=0)])
        return jax.device_put(a, rows)

    return {name: jax.tree.map(put, value) for name, value in arrays.items()}


def map_batches(
    apply: Callable[..., jax.Array], arrays: Mapping[str, np.ndarray], mesh: Mesh, size: int
) -> np.ndarray:
    """``apply(**batch)`` over the rows of ``arrays`` (equal lengths N) in batches of ``size``
    rows (a multiple of the device count; the last batch padded: one compiled shape), each
    split over the devices; the outputs' rows `[N, ...]`, padding cut."""
    count = len(next(iter(arrays.values())))
    outputs = []
    for start in range(0, count, size):
        chunk = {name: value[start : start + size] for name, value in arrays.items()}
        out = apply(**split_rows(chunk, mesh, size))
        outputs.append(np.asarray(out)[: min(size, count - start)])
    return np.concatenate(outputs)


def everywhere(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (each process calls this the same number of
    times)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


def process_share(count: int) -> range:
    """The indices of ``count`` items this process works on: contiguous, in process order, the
    shares' sizes differing by at most one."""
    processes, index = jax.process_count(), jax.process_index()
    return range(index * count // processes, (index + 1) * count // processes)


def gather_shares(local: np.ndarray, count: int) -> np.ndarray:
    """Every process's share (``process_share(count)``) of rows, in order: ``[count, ...]`` on
    every process, from this process's ``local`` rows."""
    processes = jax.process_count()
    if processes == 1:
        return local
    from jax.experimental import multihost_utils

    width = -(-count // processes)
    padded = np.zeros((width, *local.shape[1:]), local.dtype)
    padded[: len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [processes, width, ...]
    sizes = [(p + 1) * count // processes - p * count // processes for p in range(processes)]
    return np.concatenate([gathered[p, :size] for p, size in enumerate(sizes)])
