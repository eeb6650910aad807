"""`Diffusion` on Gaussian data N(0, s^2 I), whose exact denoiser is `s^2 / (s^2 + sigma^2) * x`.

Each parameterization wrapping its ideal network output must give that denoiser, and fitting a
per-sigma linear network `F = a * x_in` by least squares under each loss must recover it.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import PARAMETERIZATIONS, WEIGHTINGS, Diffusion, karras, make_process
from jaxdiff.errors import UserError

S = 0.7  # data standard deviation
PROCESSES = ["edm", "vp_discrete", "vp_cosine", "ve"]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _sigmas(process):
    return np.geomspace(process.sigma_min * 1.5, process.sigma_max / 1.5, 5)


def _ideal_output(parameterization, sigma, sigma_data):
    """Coefficient k with E[target | x] = k * x, from E[x0 | x] and E[eps | x]."""
    k_x0 = S**2 / (S**2 + sigma**2)
    k_eps = sigma / (S**2 + sigma**2)
    v = (sigma_data**2 * k_eps - sigma * k_x0) / (sigma_data * np.sqrt(sigma**2 + sigma_data**2))
    return {"eps": k_eps, "x0": k_x0, "v": v, "edm": -v, "velocity": k_eps - k_x0}[parameterization]


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("process_name", PROCESSES)
def test_ideal_network_gives_exact_denoiser(parameterization, process_name, x64):
    diffusion = Diffusion(make_process(process_name), parameterization)
    process = diffusion.process

    def ideal_net(x_in, t):  # x_in [B, D], t [B]
        sigma = process.t_to_sigma(t)[:, None]  # the net sees sigma only through t
        x = x_in / process.c_in(sigma)
        return _ideal_output(parameterization, sigma, process.sigma_data) * x

    x = jax.random.normal(jax.random.key(0), (5, 7), jnp.float64)
    sigma = jnp.asarray(_sigmas(process))  # [5], one per example
    expected = S**2 / (S**2 + sigma[:, None] ** 2) * x
    np.testing.assert_allclose(diffusion.denoiser(ideal_net)(x, sigma), expected, rtol=1e-8)
    # A scalar sigma broadcasts over the batch.
    np.testing.assert_allclose(
        diffusion.denoiser(ideal_net)(x, sigma[2]), S**2 / (S**2 + sigma[2] ** 2) * x, rtol=1e-8
    )


def _exact_moment_data(rows, size):
    """x0, noise [rows, size] with, in every row, empirical E[x0^2] = S^2, E[noise^2] = 1 and
    E[x0 * noise] = 0 exactly, so a least-squares fit per row equals its population value."""
    a, b = np.random.default_rng(0).standard_normal((2, rows, size))
    b -= np.sum(a * b, axis=1, keepdims=True) / np.sum(a * a, axis=1, keepdims=True) * a
    x0 = a * S * np.sqrt(size) / np.linalg.norm(a, axis=1, keepdims=True)
    noise = b * np.sqrt(size) / np.linalg.norm(b, axis=1, keepdims=True)
    return jnp.asarray(x0), jnp.asarray(noise)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("process_name", ["edm", "vp_discrete", "ve"])
def test_least_squares_linear_net_recovers_exact_denoiser(
    parameterization, weighting, process_name, x64
):
    diffusion = Diffusion(make_process(process_name), parameterization, weighting)
    sigma = jnp.asarray(_sigmas(diffusion.process))  # [5]: example i has noise level sigma[i]
    x0, noise = _exact_moment_data(5, 256)  # [5, 256]

    def loss(a):  # a [5]: one linear net F = a_i * x_in per noise level
        return jnp.sum(diffusion.loss_at(lambda x_in, t: a[:, None] * x_in, x0, noise, sigma))

    # The loss is a sum of quadratics, one per a_i: one Newton step from 0 solves it exactly.
    zero, ones = jnp.zeros(5), jnp.ones(5)
    curvature = jax.jvp(jax.grad(loss), (zero,), (ones,))[1]
    a_star = -jax.grad(loss)(zero) / curvature
    x_test = jax.random.normal(jax.random.key(1), (5, 64), jnp.float64)
    denoised = diffusion.denoiser(lambda x_in, t: a_star[:, None] * x_in)(x_test, sigma)
    np.testing.assert_allclose(denoised, S**2 / (S**2 + sigma[:, None] ** 2) * x_test, rtol=1e-9)


def test_loss_shape_jit_and_batch_independence():
    diffusion = Diffusion(make_process("edm"), "edm", "edm")

    def net(x_in, t, cond):  # x_in [B, H, W, C], t [B], cond [B, C]
        return x_in * 0.5 + t[:, None, None, None] + cond[:, None, None, :]

    x0 = jax.random.normal(jax.random.key(0), (4, 8, 8, 3), jnp.bfloat16)
    cond = jnp.ones((4, 3))
    loss_fn = jax.jit(lambda d, x, k, c: d.loss(net, x, k, c), static_argnums=0)
    keys = jax.random.split(jax.random.key(5), 4)  # one per example
    loss = loss_fn(diffusion, x0, keys, cond)
    assert loss.shape == (4,) and loss.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(loss)))
    # Each example draws from its own key: the first two losses do not depend on batch size.
    half = loss_fn(diffusion, x0[:2], keys[:2], cond[:2])
    np.testing.assert_allclose(half, loss[:2], rtol=1e-6)
    assert not np.allclose(
        loss_fn(diffusion, x0, jax.random.split(jax.random.key(6), 4), cond), loss
    )


def test_sampling_sigmas():
    diffusion = Diffusion(make_process("edm"), "edm", "edm")
    np.testing.assert_array_equal(diffusion.sampling_sigmas(10), karras(10, 0.002, 80.0))
    np.testing.assert_array_equal(
        diffusion.sampling_sigmas(10, "karras", rho=3.0), karras(10, 0.002, 80.0, 3.0)
    )
    vp = Diffusion(make_process("vp_discrete"))
    sigmas = vp.sampling_sigmas(4, "linspace")
    assert sigmas.shape == (5,) and float(sigmas[-1]) == 0.0


def test_errors():
    edm = make_process("edm")
    with pytest.raises(
        UserError, match="parameterization='flow' is not supported; accepted: eps, v, x0"
    ):
        Diffusion(edm, "flow")
    with pytest.raises(UserError, match="weighting='snr' is not supported; accepted: uniform"):
        Diffusion(edm, "eps", "snr")
    with pytest.raises(UserError, match=re.escape("min_snr_gamma=0.0")):
        Diffusion(edm, "eps", "min_snr", 0.0)
    with pytest.raises(UserError, match="'edm' is not a Process"):
        Diffusion("edm")
    with pytest.raises(UserError, match="does not take option 'rho'"):
        Diffusion(edm).sampling_sigmas(10, "exponential", rho=7.0)
