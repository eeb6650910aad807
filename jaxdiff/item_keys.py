"""One random key per item (image, example) of a numbered set: item i of a set drawn from ``key``
uses ``fold_in(key, i)``, so its randomness does not depend on how the set is split into
batches, calls, devices or processes; a call that makes items ``first .. first + count - 1``
passes ``first``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import require

MAX_INDEX = 2**31  # indices are int32


def item_keys(key: jax.Array, count: int, first: int = 0) -> jax.Array:
    """The keys of items ``first .. first + count - 1``: `fold_in(key, first + i)`. [count]"""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(count))


def check_first_index(first: object, count: int) -> None:
    """A one-line error unless ``first`` is an integer with ``0 <= first`` and
    ``first + count <= 2**31``."""
    require(
        isinstance(first, int | np.integer)
        and not isinstance(first, bool)
        and 0 <= first <= MAX_INDEX - count,
        f"first_index={first!r} must be an integer in [0, {MAX_INDEX - count}] for {count} "
        f"items (indices below 2**31)",
    )
