"""Euler and Heun on Gaussian data N(0, s^2), where the PF-ODE has the exact solution
`x(sigma) = x(sigma_max) * sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2)`."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.diffusion import karras
from jaxdiff.errors import UserError

S, SIGMA_MAX = 0.5, 80.0


def exact_denoiser(x, sigma):
    return S**2 / (S**2 + sigma**2) * x


def exact_solution(x_start, sigma_start, sigma):
    return x_start * np.sqrt(S**2 + sigma**2) / np.sqrt(S**2 + sigma_start**2)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize(("name", "order"), [("euler", 1.0), ("heun", 2.0)])
def test_convergence_order(name, order, x64):
    """Slope of log-error against log-steps on a Karras (rho = 7) grid from 80 down to 0.05."""
    sampler = samplers.get(name)
    x = jax.random.normal(jax.random.key(0), (4, 8), jnp.float64) * SIGMA_MAX
    sigma_end, rho = 0.05, 7.0
    steps = np.array([16, 32, 64, 128])
    errors = []
    for n in steps:
        ramp = np.linspace(0.0, 1.0, n + 1)
        sigmas = SIGMA_MAX ** (1 / rho) + ramp * (sigma_end ** (1 / rho) - SIGMA_MAX ** (1 / rho))
        sigmas = jnp.asarray(sigmas**rho)
        out = sampler(exact_denoiser, x, sigmas)
        assert out.dtype == jnp.float64
        errors.append(float(jnp.max(jnp.abs(out - exact_solution(x, SIGMA_MAX, sigma_end)))))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert -slope == pytest.approx(order, abs=0.15), (errors, slope)


@pytest.mark.parametrize(("name", "rtol"), [("euler", 0.1), ("heun", 0.01)])
def test_full_schedule_to_zero_samples_the_data(name, rtol):
    x = jax.random.normal(jax.random.key(1), (2, 16)) * SIGMA_MAX
    out = samplers.get(name)(exact_denoiser, x, karras(40, 0.002, SIGMA_MAX))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, exact_solution(x, SIGMA_MAX, 0.0), rtol=rtol)


def test_heun_step_to_zero_is_an_euler_step():
    """A second-order step into sigma = 0 would divide by 0; Heun takes Euler's there."""
    x = jnp.ones((1, 3)) * 2.0
    sigmas = jnp.array([3.0, 0.0])
    out = samplers.get("heun")(exact_denoiser, x, sigmas)
    np.testing.assert_allclose(out, exact_denoiser(x, 3.0), atol=1e-6)
    np.testing.assert_allclose(out, samplers.get("euler")(exact_denoiser, x, sigmas))
    assert bool(jnp.all(jnp.isfinite(samplers.get("heun")(exact_denoiser, x, karras(2, 0.5, 3.0)))))


def test_heun_churn_is_reproducible_by_key():
    heun = samplers.get("heun")
    x = jax.random.normal(jax.random.key(2), (3, 4)) * 10.0
    sigmas = karras(8, 0.01, 10.0)
    kw = {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 5.0}
    a = heun(exact_denoiser, x, sigmas, jax.random.key(7), **kw)
    b = heun(exact_denoiser, x, sigmas, jax.random.key(7), **kw)
    c = heun(exact_denoiser, x, sigmas, jax.random.key(8), **kw)
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    deterministic = heun(exact_denoiser, x, sigmas)
    assert not np.allclose(a, deterministic)
    # Churn confined to a sigma window that holds no step adds nothing.
    outside = heun(exact_denoiser, x, sigmas, jax.random.key(7), s_churn=20.0, s_tmin=20.0)
    np.testing.assert_allclose(outside, deterministic, rtol=1e-6)


def test_bf16_denoiser_keeps_a_float32_state():
    def bf16_denoiser(x, sigma):
        return exact_denoiser(x.astype(jnp.bfloat16), sigma.astype(jnp.bfloat16))

    x = (jax.random.normal(jax.random.key(3), (2, 8)) * SIGMA_MAX).astype(jnp.bfloat16)
    for name in samplers.names():
        out = samplers.get(name)(bf16_denoiser, x, karras(10, 0.002, SIGMA_MAX), jax.random.key(0))
        assert out.dtype == jnp.float32, name
        assert bool(jnp.all(jnp.isfinite(out))), name


def test_samplers_jit_with_traced_sigmas():
    euler = jax.jit(lambda x, s: samplers.get("euler")(exact_denoiser, x, s))
    x = jnp.ones((1, 2)) * 10.0
    sigmas = karras(6, 0.01, 10.0)
    np.testing.assert_allclose(euler(x, sigmas), samplers.get("euler")(exact_denoiser, x, sigmas))


def test_errors():
    euler, heun = samplers.get("euler"), samplers.get("heun")
    x = jnp.ones((1, 2))
    with pytest.raises(UserError, match=r"strictly descending; got sigmas\[2\]=2.0 after"):
        euler(exact_denoiser, x, jnp.array([3.0, 1.0, 2.0, 0.0]))
    with pytest.raises(UserError, match=r"strictly descending; got sigmas\[2\]=1.0"):
        euler(exact_denoiser, x, jnp.array([3.0, 1.0, 1.0, 0.0]))
    with pytest.raises(UserError, match="non-negative"):
        euler(exact_denoiser, x, jnp.array([3.0, 1.0, -1.0]))
    with pytest.raises(UserError, match=r"at least 2 entries; got shape \(1,\)"):
        euler(exact_denoiser, x, jnp.array([3.0]))
    with pytest.raises(UserError, match="does not take option 'eta'; accepted: s_churn, s_tmin"):
        heun(exact_denoiser, x, karras(4, 0.1, 1.0), eta=1.0)
    with pytest.raises(UserError, match=re.escape("s_churn=1.0 > 0 needs a key")):
        heun(exact_denoiser, x, karras(4, 0.1, 1.0), s_churn=1.0)
