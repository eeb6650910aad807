"""Sample-set distances on cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.benchmarks import metrics
from jaxdiff.benchmarks.mixtures import GaussianMixture


def test_coupled_rmse():
    a = jnp.zeros((4, 3))
    assert float(metrics.coupled_rmse(a + 2.0, a)) == pytest.approx(2.0)


def test_sliced_wasserstein_of_a_shift():
    """Shifting a set by delta moves each projection by delta . theta: SW2 = |delta| / sqrt(d)
    in expectation over random unit directions theta."""
    x = jax.random.normal(jax.random.key(0), (500, 4))
    delta = jnp.array([1.0, -2.0, 0.5, 0.0])
    sw = metrics.sliced_wasserstein(jax.random.key(1), x, x + delta, projections=4000)
    assert float(sw) == pytest.approx(float(jnp.linalg.norm(delta)) / 2.0, rel=0.05)
    assert float(metrics.sliced_wasserstein(jax.random.key(1), x, x)) == 0.0
    # Sorting makes it blind to the order of the samples.
    perm = jax.random.permutation(jax.random.key(2), 500)
    assert float(metrics.sliced_wasserstein(jax.random.key(1), x, x[perm])) == 0.0


def test_mmd_separates_distributions():
    k = jax.random.split(jax.random.key(0), 3)
    a, b = (jax.random.normal(key, (800, 2)) for key in k[:2])
    c = jax.random.normal(k[2], (800, 2)) + 1.0
    same, shifted = metrics.mmd(a, b, 1.0), metrics.mmd(a, c, 1.0)
    assert abs(float(same)) < 5e-3
    assert float(shifted) > 0.1


def test_mode_weight_tv():
    mix = GaussianMixture(
        weights=jnp.array([0.25, 0.75]),
        means=jnp.array([[-5.0], [5.0]]),
        variances=jnp.array([[0.1], [0.1]]),
    )
    all_right = jnp.full((10, 1), 5.0)
    assert float(metrics.mode_weight_tv(mix, all_right)) == pytest.approx(0.25)
    balanced = jnp.array([[-5.0]] * 25 + [[5.0]] * 75)
    assert float(metrics.mode_weight_tv(mix, balanced)) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(mix.responsibilities(all_right, 0.0)[:, 1], 1.0)
