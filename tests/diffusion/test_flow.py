"""Flow matching through the denoiser contract: the velocity parameterization of a rectified-flow
model, and the Euler step in sigma, which is the flow's Euler step in t."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.diffusion import Diffusion, RectifiedFlow, network_target


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def velocity(x_t: jax.Array, time: jax.Array) -> jax.Array:
    """A velocity field that is not the exact one of any data: x_t [B, D], time [B] (1000 t)."""
    t = time[:, None] / 1000
    return jnp.sin(x_t) - 0.5 * x_t * t + t**2


def test_velocity_denoiser_gives_x0_from_eps_minus_x0(x64):
    diffusion = Diffusion(RectifiedFlow(), "velocity")
    k0, k1 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k0, (4, 6)), jax.random.normal(k1, (4, 6))
    sigma = jnp.array([0.01, 0.5, 3.0, 200.0])
    exact = lambda x_in, time: eps - x0  # noqa: E731 (the network that knows the velocity)
    x = x0 + sigma[:, None] * eps
    np.testing.assert_allclose(diffusion.denoiser(exact)(x, sigma), x0, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(network_target(x0, eps, sigma[:, None], "velocity"), eps - x0)


@pytest.mark.parametrize("steps", [1, 4, 9])
def test_euler_in_sigma_is_the_flow_euler_step_in_t(steps, x64):
    diffusion = Diffusion(RectifiedFlow(), "velocity")
    times = np.linspace(0.999, 0.0, steps + 1)  # t of each step, down to the data
    x_t = jax.random.normal(jax.random.key(1), (3, 5))
    sigmas = jnp.asarray(times / (1 - times))
    out = samplers.get("euler")(diffusion.denoiser(velocity), x_t / (1 - times[0]), sigmas)
    for t, t_next in itertools.pairwise(times):
        x_t = x_t + (t_next - t) * velocity(x_t, jnp.full((3,), 1000 * t))
    np.testing.assert_allclose(out, x_t, rtol=1e-10, atol=1e-12)
    wrong = samplers.get("euler")(diffusion.denoiser(velocity), x_t / (1 - times[0]), 1.01 * sigmas)
    assert np.abs(np.asarray(wrong) - np.asarray(x_t)).max() > 1e-3


def test_the_denoiser_at_sigma_inf_is_its_limit(x64):
    """At sigma = inf the state is `x / sigma` and D the limit of D(sigma x, sigma): here within
    1e-4 at sigma = 1e6, converging like 1 / sigma; the finite formula would be NaN there."""
    denoise = Diffusion(RectifiedFlow(), "velocity").denoiser(velocity)
    state = jax.random.normal(jax.random.key(2), (3, 5))
    limit = denoise(state, jnp.inf)
    gaps = [np.abs(denoise(s * state, s) - limit).max() for s in (1e3, 1e6)]
    assert np.all(np.isfinite(limit)) and gaps[1] < 1e-4 and gaps[0] > 300 * gaps[1], gaps
    np.testing.assert_allclose(limit, state - velocity(state, jnp.full((3,), 1000.0)), rtol=1e-12)
    x0_param = Diffusion(RectifiedFlow(), "x0").denoiser(velocity)
    np.testing.assert_allclose(x0_param(state, jnp.inf), velocity(state, jnp.full((3,), 1000.0)))
