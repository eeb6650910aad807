"""The check of the integer arrays that address the examples of a data set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxdiff.errors import UserError


def check_indices(values: Sequence[int] | np.ndarray, noun: str) -> np.ndarray:
    """`values` as a numpy array, after checking it is 1-D, integer and non-negative; `noun`
    names one value in the messages ("position", "index")."""
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise UserError(
            f"{noun} array of dtype {array.dtype} and shape {array.shape}; accepted: a 1-D "
            "integer array"
        )
    if array.size and array.min() < 0:
        raise UserError(f"{noun} {int(array.min())} is negative; accepted: integers from 0")
    return array
