"""Noise sources: standard-normal increments, reproducible by key, and one Brownian path shared
by every partition of the interval."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.samplers.noise import (
    brownian_noise,
    brownian_value,
    independent_noise,
    make_noise,
    stochastic_noise,
)

KEY = jax.random.key(3)


@pytest.mark.parametrize("make", [independent_noise, brownian_noise])
def test_increments_are_standard_normal_and_independent(make):
    kwargs = {"sigma_max": 10.0} if make is brownian_noise else {}
    noise = make(KEY, (20_000,), jnp.float32, **kwargs)
    intervals = [(10.0, 5.0), (5.0, 1.0), (1.0, 0.3), (0.3, 0.0)]  # disjoint
    draws = np.stack([np.asarray(noise(jnp.float32(a), jnp.float32(b))) for a, b in intervals])
    np.testing.assert_allclose(draws.mean(1), 0.0, atol=0.03)
    np.testing.assert_allclose(draws.std(1), 1.0, atol=0.03)
    assert np.abs(np.corrcoef(draws)[np.triu_indices(4, 1)]).max() < 0.03


def test_brownian_increments_add_up_over_any_partition():
    """W(10) - W(0) from one increment equals the sum over a partition: the path is one."""
    noise = brownian_noise(KEY, (7,), jnp.float32, 10.0)
    whole = noise(jnp.float32(10.0), jnp.float32(0.0)) * np.sqrt(10.0)
    cuts = [10.0, 6.5, 2.0, 0.25, 0.0]
    parts = sum(
        noise(jnp.float32(a), jnp.float32(b)) * np.sqrt(a - b) for a, b in itertools.pairwise(cuts)
    )
    np.testing.assert_allclose(parts, whole, atol=1e-5)


def test_brownian_value_is_continuous_and_reproducible():
    w = jax.vmap(lambda t: brownian_value(KEY, t, 1.0, (), jnp.float32))
    t = jnp.linspace(0.0, 1.0, 2001)
    path = np.asarray(w(t))
    assert path[0] == 0.0
    np.testing.assert_array_equal(path, np.asarray(w(t)))
    # Quadratic variation of Brownian motion over [0, 1] is 1.
    assert np.sum(np.diff(path) ** 2) == pytest.approx(1.0, rel=0.1)
    other = np.asarray(
        jax.vmap(lambda t: brownian_value(jax.random.key(4), t, 1.0, (), jnp.float32))(t)
    )
    assert not np.allclose(path, other)


def test_errors():
    x, sigmas = jnp.ones((2, 3)), jnp.array([2.0, 1.0, 0.0])
    with pytest.raises(
        UserError, match="sampler 's': noise='pink' is not supported; accepted: independent"
    ):
        make_noise("s", "pink", KEY, x, sigmas)
    with pytest.raises(UserError, match="sampler 's' adds noise and needs a key"):
        make_noise("s", "brownian", None, x, sigmas)
    with pytest.raises(UserError, match="sampler 's': eta=-1 must be >= 0"):
        stochastic_noise("s", -1, "independent", KEY, x, sigmas)
    assert stochastic_noise("s", 0.0, "brownian", None, x, sigmas) is None
