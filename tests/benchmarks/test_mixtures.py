"""The Gaussian-mixture benchmark's exact pieces: denoiser, PF-ODE velocity, sampling and the
float64 reference solution, each against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.benchmarks.mixtures import (
    GaussianMixture,
    as_dtype,
    make_mixture,
    reference_solution,
    straightness,
)
from jaxdiff.errors import UserError


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def one_gaussian(mean=(0.5, -1.0), var=(0.3, 0.05)) -> GaussianMixture:
    return GaussianMixture(
        weights=np.ones(1), means=np.asarray([mean], np.float64), variances=np.asarray([var])
    )


def test_single_gaussian_denoiser_and_velocity_are_closed_form(x64):
    g = as_dtype(one_gaussian(), jnp.float64)
    x = jax.random.normal(jax.random.key(0), (5, 2), jnp.float64) * 3.0
    sigma = 0.7
    want = g.means + g.variances / (g.variances + sigma**2) * (x - g.means)
    np.testing.assert_allclose(g.denoise(x, sigma), want, rtol=1e-12)
    np.testing.assert_allclose(g.velocity(x, sigma), (x - want) / sigma, rtol=1e-12)
    np.testing.assert_array_equal(g.velocity(x, 0.0), jnp.zeros_like(x))


def test_mixture_denoiser_is_the_posterior_mean(x64):
    """Monte Carlo check: E[x0 | x] by importance weighting exact samples of x0."""
    mix = as_dtype(make_mixture(dim=2, components=3, component_std=0.3, seed=4), jnp.float64)
    x0, _ = mix.sample(jax.random.key(1), 400_000, jnp.float64)
    x, sigma = jnp.asarray([[0.3, -0.2]]), 0.8
    w = jnp.exp(-jnp.sum((x - x0) ** 2, -1) / (2 * sigma**2))
    mc = jnp.sum(w[:, None] * x0, 0) / jnp.sum(w)
    np.testing.assert_allclose(mix.denoise(x, sigma)[0], mc, atol=5e-3)


def test_samples_have_the_mixture_moments(x64):
    mix = as_dtype(make_mixture(dim=3, components=4, seed=2), jnp.float64)
    x0, comp = mix.sample(jax.random.key(2), 200_000, jnp.float64)
    np.testing.assert_allclose(np.bincount(comp, minlength=4) / 200_000, mix.weights, atol=5e-3)
    mean = jnp.sum(mix.weights[:, None] * mix.means, 0)
    np.testing.assert_allclose(x0.mean(0), mean, atol=1e-2)
    noised = mix.sample_noised(jax.random.key(3), 200_000, 5.0, jnp.float64)
    var = jnp.sum(mix.weights[:, None] * (mix.variances + mix.means**2), 0) - mean**2 + 25.0
    np.testing.assert_allclose(noised.var(0), var, rtol=2e-2)


def test_reference_solution_matches_the_exact_gaussian_flow():
    """For one Gaussian the PF-ODE solution is mu + (x - mu) sqrt(v + s^2) / sqrt(v + S^2)."""
    g = one_gaussian()
    x = np.random.default_rng(0).normal(size=(6, 2)) * 10.0
    out, nfev = reference_solution(g, x, 10.0, 0.0)
    mu, v = g.means[0], g.variances[0]
    np.testing.assert_allclose(out, mu + (x - mu) * np.sqrt(v) / np.sqrt(v + 100.0), atol=1e-9)
    assert nfev > 0
    mid, _ = reference_solution(g, x, 10.0, 2.0)
    np.testing.assert_allclose(
        mid, mu + (x - mu) * np.sqrt(v + 4.0) / np.sqrt(v + 100.0), atol=1e-9
    )


def test_reference_solution_from_sigma_inf_is_the_limit_of_the_exact_gaussian_flow():
    """From x = S eps at S the solution is mu + (S eps - mu) sqrt(v + s^2) / sqrt(v + S^2), which
    tends to mu + eps sqrt(v + s^2): the run from sigma = inf with the unit noise as its state,
    solved in flow time. Shifting the noise by 1e-3 moves it by far more than the tolerance."""
    g = one_gaussian()
    eps = np.random.default_rng(1).normal(size=(6, 2))
    mu, v = g.means[0], g.variances[0]
    for end in (0.0, 2.0):
        out, nfev = reference_solution(g, eps, np.inf, end)
        np.testing.assert_allclose(out, mu + eps * np.sqrt(v + end**2), atol=1e-9)
        assert nfev > 0
    shifted, _ = reference_solution(g, eps + 1e-3, np.inf, 0.0)
    assert np.abs(shifted - (mu + eps * np.sqrt(v))).max() > 1e-4


def test_straightness_sees_straight_lines_in_each_process_where_the_theory_has_them():
    """A point mass moves on straight lines in flow coordinates (x_t = (1 - t) mu + t eps) and
    on arcs in VP ones; data N(mu, I) moves on straight lines in VP coordinates
    (z = mu / sqrt(1 + sigma^2) + eps) and not in flow ones."""
    eps = np.random.default_rng(2).normal(size=(64, 2))
    point = straightness(one_gaussian(var=(1e-8, 1e-8)), eps)
    unit = straightness(one_gaussian(var=(1.0, 1.0)), eps)
    assert point["flow"] < 1e-4 < 0.05 < point["vp"], point
    assert unit["vp"] < 1e-4 < 0.05 < unit["flow"], unit


def test_reference_solution_is_stable_when_the_tolerance_is_halved():
    mix = make_mixture(dim=2, components=5, component_std=0.05, seed=3)
    with jax.enable_x64(True):
        x = np.asarray(mix.sample_noised(jax.random.key(0), 64, 14.6, jnp.float64))
    a, _ = reference_solution(mix, x, 14.6, 0.0, rtol=1e-10, atol=1e-10)
    b, _ = reference_solution(mix, x, 14.6, 0.0, rtol=5e-11, atol=5e-11)
    assert np.abs(a - b).max() < 1e-8


def test_bad_input():
    with pytest.raises(UserError, match="dim=0 must be a positive integer"):
        make_mixture(dim=0)
    with pytest.raises(UserError, match="component_std=-1"):
        make_mixture(component_std=-1)
    with pytest.raises(UserError, match=r"sigma_end=3\.0 < sigma_start=1\.0"):
        reference_solution(one_gaussian(), np.zeros((1, 2)), 1.0, 3.0)
