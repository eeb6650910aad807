"""Comparing trained parameters across device layouts."""

import numpy as np

KEY_PROJECTIONS = ("k_proj", "to_k")


def assert_close(params: list, reference: list, rtol: float = 1e-5) -> None:
    """``(path, array)`` lists within ``rtol`` relative, overall and array by array.

    Key-projection biases are left out of the second: attention is invariant to them (softmax
    ignores a shift shared by all keys), so their gradient is rounding noise, which Adam scales
    up to full-size steps whose sign depends on the reduction order.
    """
    a = np.concatenate([np.ravel(x) for _, x in params])
    b = np.concatenate([np.ravel(y) for _, y in reference])
    assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b)
    for (path, x), (other, y) in zip(params, reference, strict=True):
        assert path == other
        if path[-1] == "bias" and path[-2] in KEY_PROJECTIONS:
            continue
        assert np.linalg.norm(x - y) <= rtol * np.linalg.norm(y), path
