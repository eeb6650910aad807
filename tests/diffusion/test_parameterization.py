"""Parameterizations: exact eps / v / x0 conversions, scalings, and the regression target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import (
    PARAMETERIZATIONS,
    eps_to_x0,
    network_target,
    scalings,
    v_to_x0,
    x0_to_eps,
    x0_to_v,
)
from jaxdiff.errors import UserError

SIGMAS = [0.002, 0.03, 0.5, 1.0, 7.0, 80.0]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _draw(sigma, sigma_data=1.0):
    k0, k1 = jax.random.split(jax.random.key(0))
    x0 = sigma_data * jax.random.normal(k0, (3, 8), jnp.float64)
    noise = jax.random.normal(k1, (3, 8), jnp.float64)
    return x0, noise, x0 + sigma * noise


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_conversions_are_exact_inverses(sigma, sigma_data, x64):
    x0, noise, x = _draw(sigma, sigma_data)
    np.testing.assert_allclose(eps_to_x0(x, sigma, noise), x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x0_to_eps(x, sigma, x0), noise, rtol=1e-9, atol=1e-9)
    v = x0_to_v(x, sigma, x0, sigma_data)
    np.testing.assert_allclose(v_to_x0(x, sigma, v, sigma_data), x0, rtol=1e-12, atol=1e-12)
    pred = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)
    np.testing.assert_allclose(
        x0_to_v(x, sigma, v_to_x0(x, sigma, pred, sigma_data), sigma_data), pred, rtol=1e-9
    )
    # v is the network target of the "v" parameterization.
    np.testing.assert_allclose(v, network_target(x0, noise, sigma, "v", sigma_data), rtol=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_v_is_salimans_ho_v_on_the_vp_latent(sigma, x64):
    x0, noise, x = _draw(sigma)
    alpha, sigma_vp = 1 / np.sqrt(1 + sigma**2), sigma / np.sqrt(1 + sigma**2)
    v = alpha * noise - sigma_vp * x0
    np.testing.assert_allclose(x0_to_v(x, sigma, x0), v, rtol=1e-9, atol=1e-12)
    # And the VP latent z = alpha * x recovers x0 as alpha * z - sigma_vp * v.
    np.testing.assert_allclose(alpha * (alpha * x) - sigma_vp * v, x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_target_reconstructs_x0(parameterization, sigma, x64):
    """`c_skip * x + c_out * target == x0`, with the closed-form target."""
    x0, noise, x = _draw(sigma, 0.5)
    c_skip, c_out = scalings(parameterization, jnp.asarray(sigma), 0.5)
    target = network_target(x0, noise, sigma, parameterization, 0.5)
    np.testing.assert_allclose(c_skip * x + c_out * target, x0, rtol=1e-10, atol=1e-10)


def test_edm_scalings_match_karras_table_1(x64):
    sigma, sd = jnp.array([0.01, 0.5, 3.0]), 0.5
    c_skip, c_out = scalings("edm", sigma, sd)
    np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2))
    c_skip_v, c_out_v = scalings("v", sigma, sd)
    np.testing.assert_allclose(c_skip_v, c_skip)
    np.testing.assert_allclose(c_out_v, -c_out)
    assert [float(c) for c in scalings("eps", 2.0)] == [1.0, -2.0]
    assert [float(c) for c in scalings("x0", 2.0)] == [0.0, 1.0]


def test_target_has_no_cancellation_in_float32():
    """At tiny sigma the closed-form target equals the noise-space target to float32 precision,
    where `(x0 - c_skip * x) / c_out` computed naively would lose most digits."""
    x0 = jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32)
    noise = jnp.linspace(2.0, -2.0, 16, dtype=jnp.float32)
    sigma = jnp.float32(1e-4)
    np.testing.assert_array_equal(network_target(x0, noise, sigma, "eps"), noise)
    v = network_target(x0, noise, sigma, "v")
    np.testing.assert_allclose(v, (noise - 1e-4 * x0) / np.sqrt(1 + 1e-8), rtol=1e-6)


def test_unknown_parameterization():
    with pytest.raises(
        UserError, match="parameterization='flow' is not supported; accepted: eps, v, x0"
    ):
        scalings("flow", 1.0)
