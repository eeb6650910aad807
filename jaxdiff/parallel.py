"""Device mesh and shardings: data parallelism over every device, no pmap.

The train step is ``jax.jit`` with explicit shardings: parameters, optimizer state and EMA are
replicated, the batch is split along its first axis over the ``data`` mesh axis. Host batches
become global arrays through ``jax.make_array_from_process_local_data``, which is multi-host safe.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.errors import UserError


def data_mesh(batch_size: int) -> Mesh:
    """A 1-D ``data`` mesh over all devices; the global batch must divide evenly over it."""
    devices = jax.device_count()
    if batch_size % devices:
        raise UserError(
            f"train.batch_size {batch_size} is not divisible by the {devices} devices; "
            f"use a multiple of {devices}"
        )
    return jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over ``data``."""
    return NamedSharding(mesh, P("data"))


def shard_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """The global host batch to global arrays split over the mesh; each process contributes
    only its own contiguous slice of the batch."""
    count, index = jax.process_count(), jax.process_index()

    def local(a: np.ndarray) -> jax.Array:
        part = a.shape[0] // count
        return jax.make_array_from_process_local_data(
            sharding, a[index * part : (index + 1) * part]
        )

    return jax.tree.map(local, batch)
