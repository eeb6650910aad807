"""PF-ODE likelihoods against closed forms: Gaussian and Gaussian-mixture data with their exact
denoisers (the noised density at sigma_min is closed-form), Hutchinson unbiasedness against its
exact variance, and the bits/dim of dequantized 8-bit data against a discretized Gaussian."""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp
from scipy.stats import norm

from jaxdiff.benchmarks.mixtures import GaussianMixture, as_dtype, make_mixture
from jaxdiff.errors import UserError
from jaxdiff.evaluation.likelihood import Likelihood, ODESettings, bits_per_dim, dequantize, nll

D = 8
SIGMA_MIN, SIGMA_MAX = 1e-3, 1e3  # sigma_max >> data scale: the N(0, sigma_max^2) prior is ~exact
LN2 = math.log(2.0)
# Max bits/dim errors against a Gaussian's closed form: of the NLL, and of the integration alone.
NLL_TOLERANCE, INTEGRATION_TOLERANCE = 0.01, 1e-3


def log_density(mix: GaussianMixture, x: jax.Array, sigma: float) -> jax.Array:
    """Closed-form `log p_sigma(x)` of the noised mixture. x: [B, d] -> [B]"""
    var = mix.variances + sigma**2  # [K, d]
    diff = x[:, None, :] - mix.means[None]  # [B, K, d]
    log_lik = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)  # [B, K]
    return logsumexp(jnp.log(mix.weights) + log_lik, axis=-1)


def gaussian(seed: int = 0) -> GaussianMixture:
    """One Gaussian in D dims: means N(0, 1), variances log-uniform in [0.05, 2]. float32."""
    rng = np.random.default_rng(seed)
    return as_dtype(
        GaussianMixture(
            weights=np.ones(1),
            means=rng.normal(0.0, 1.0, (1, D)),
            variances=np.exp(rng.uniform(np.log(0.05), np.log(2.0), (1, D))),
        ),
        jnp.float32,
    )


def rotation(seed: int = 1) -> jax.Array:
    """A random orthogonal D x D matrix: rotated data has a full covariance, so the Jacobian of
    the denoiser is not diagonal. [D, D]"""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))
    return jnp.asarray(q, jnp.float32)


def rotated(g: GaussianMixture, q: jax.Array):
    """Data `x0 = Q y0`, y0 ~ g: its exact denoiser and noised log density."""

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        return g.denoise(x @ q, sigma) @ q.T

    def logp(x: jax.Array, sigma: float) -> jax.Array:
        return log_density(g, x @ q, sigma)

    return denoise, logp


def solve(denoise, x, key=None, **options):
    """`nll` under jit with `ODESettings(SIGMA_MIN, SIGMA_MAX, **options)` static."""
    ode = ODESettings(SIGMA_MIN, SIGMA_MAX, **options)
    return jax.jit(functools.partial(nll, denoise), static_argnames="ode")(x, key, ode=ode)


def bpd_error(nats: jax.Array, logp: jax.Array) -> jax.Array:
    """Per-example error in bits/dim of an NLL against the true log density. [B]"""
    return (nats + logp) / (D * LN2)


def rotated_gaussian_data() -> tuple[Callable, Callable, jax.Array]:
    """The rotated Gaussian's exact denoiser, noised log density, and 256 points of its data."""
    g, q = gaussian(), rotation()
    denoise, logp = rotated(g, q)
    return denoise, logp, g.sample_noised(jax.random.key(1), 256, SIGMA_MIN) @ q.T  # [256, D]


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_gaussian_nll_with_exact_divergence_is_the_closed_form(solver):
    """A full-covariance Gaussian: ODE NLL = -log N(x; Q mu, Q diag(v + sigma_min^2) Q^T)."""
    denoise, logp, x = rotated_gaussian_data()
    out = solve(denoise, x, divergence="exact", solver=solver)
    assert out.nats.shape == out.bits_per_dim.shape == (256,)
    np.testing.assert_allclose(out.bits_per_dim, out.nats / (D * LN2), rtol=1e-6)
    nll_error, integration_error = closed_form_errors(out, logp, x)
    assert nll_error < NLL_TOLERANCE  # measured 1.0e-3
    assert integration_error < INTEGRATION_TOLERANCE  # measured 6e-5


def closed_form_errors(out: Likelihood, logp: Callable, x: jax.Array) -> tuple[float, float]:
    """Max bits/dim errors against the closed form `logp` at the data `x`: of the NLL `out`, and
    of its integration alone (with the exact noised density at sigma_max as the prior)."""
    want = logp(x, SIGMA_MIN)
    solved = -(logp(out.x_end, SIGMA_MAX) + out.delta_logp)
    return tuple(float(jnp.max(jnp.abs(bpd_error(n, want)))) for n in (out.nats, solved))


def test_a_denoiser_at_a_wrong_sigma_misses_the_closed_form():
    """The check above can fail: the exact denoiser called at 1.05 sigma (a wrong time
    conversion) misses both bounds by more than 10x (measured 0.112 and 0.112 bits/dim)."""
    denoise, logp, x = rotated_gaussian_data()
    out = solve(lambda x, sigma: denoise(x, 1.05 * sigma), x, divergence="exact", solver="rk4")
    nll_error, integration_error = closed_form_errors(out, logp, x)
    assert nll_error > 10 * NLL_TOLERANCE and integration_error > 10 * INTEGRATION_TOLERANCE


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_two_component_mixture_nll_is_the_mixture_log_density(solver):
    mix = as_dtype(make_mixture(dim=D, components=2, spread=1.5, component_std=0.5, seed=3), "f4")
    x = mix.sample_noised(jax.random.key(2), 256, SIGMA_MIN)  # [256, D]
    out = solve(mix.denoise, x, divergence="exact", solver=solver)
    want = log_density(mix, x, SIGMA_MIN)
    assert float(jnp.max(jnp.abs(bpd_error(out.nats, want)))) < 0.01  # measured 2.5e-3
    solved = -(log_density(mix, out.x_end, SIGMA_MAX) + out.delta_logp)
    assert float(jnp.max(jnp.abs(bpd_error(solved, want)))) < 2e-3  # rk4 5.6e-4, dopri5 1.5e-4
    if solver == "dopri5":
        assert 50 < int(out.nfe) < 1000


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_the_predicted_variance(probe):
    """With the probe e fixed over the solve, the Hutchinson log-density change is e^T M e with
    M = int (dg/dx) dt = Q diag(c) Q^T, c_i = log((v_i + S^2) / (v_i + s^2)) / 2, while the exact
    one is tr M. So hutchinson - exact has mean 0 and variance 2 sum_{i != j} M_ij^2
    (Rademacher) or 2 ||M||_F^2 (Gaussian); the mean over N points is within 4 standard errors.
    """
    g, q = gaussian(), rotation()
    denoise, _ = rotated(g, q)
    n = 512
    x = g.sample_noised(jax.random.key(3), n, SIGMA_MIN) @ q.T  # [n, D]
    exact = solve(denoise, x, divergence="exact")
    hutch = solve(denoise, x, jax.random.key(4), divergence="hutchinson", probe=probe)
    # One ODE solved by two programs: equal up to float32 rounding accumulated over the steps.
    scale = float(np.abs(exact.x_end).max())
    np.testing.assert_allclose(hutch.x_end, exact.x_end, rtol=0, atol=1e-5 * scale)
    diff = np.asarray(hutch.delta_logp - exact.delta_logp, np.float64)  # [n] nats

    v = np.asarray(g.variances[0], np.float64)
    c = 0.5 * np.log((v + SIGMA_MAX**2) / (v + SIGMA_MIN**2))  # [D]
    m = np.asarray(q, np.float64) @ np.diag(c) @ np.asarray(q, np.float64).T  # [D, D]
    var = 2 * np.sum(m**2) - (2 * np.sum(np.diag(m) ** 2) if probe == "rademacher" else 0.0)
    stderr = math.sqrt(var / n)
    assert abs(diff.mean()) < 4 * stderr, (diff.mean(), stderr)
    assert 0.6 < diff.var() / var < 1.6, (diff.var(), var)
    # The mean NLL in bits/dim agrees with the exact divergence's; stderr here is ~0.04 bpd.
    mean_gap = float(jnp.mean(hutch.bits_per_dim - exact.bits_per_dim))
    assert abs(mean_gap) < 4 * stderr / (D * LN2)


def test_rademacher_probe_is_exact_for_a_diagonal_jacobian():
    """e_i^2 = 1, so e^T diag(a) e = tr diag(a) for every Rademacher probe."""
    g = gaussian()
    x = g.sample_noised(jax.random.key(5), 64, SIGMA_MIN)
    exact = solve(g.denoise, x, divergence="exact", steps=32)
    hutch = solve(g.denoise, x, jax.random.key(6), divergence="hutchinson", steps=32)
    np.testing.assert_allclose(hutch.nats, exact.nats, atol=1e-4)


def test_any_shape_and_per_example_probes():
    """x [B, 2, 2, 2] gives what the flat [B, 8] gives, and example b's Hutchinson probe does not
    depend on the batch it is in."""
    g, q = gaussian(), rotation()
    denoise, _ = rotated(g, q)
    x = g.sample_noised(jax.random.key(7), 8, SIGMA_MIN) @ q.T  # [8, D]
    key = jax.random.key(8)
    flat = solve(denoise, x, key, steps=32)

    def denoise_4d(x: jax.Array, sigma: jax.Array) -> jax.Array:
        return denoise(x.reshape(x.shape[0], D), sigma).reshape(x.shape)

    shaped = solve(denoise_4d, x.reshape(8, 2, 2, 2), key, steps=32)
    assert shaped.x_end.shape == (8, 2, 2, 2)
    np.testing.assert_allclose(shaped.nats, flat.nats, rtol=1e-5)
    half = solve(denoise, x[:4], key, steps=32)
    np.testing.assert_allclose(half.nats, flat.nats[:4], rtol=1e-5)
    raw = solve(denoise, x, jax.random.PRNGKey(8), steps=32)  # uint32 key data: the same key
    np.testing.assert_array_equal(raw.nats, flat.nats)


def test_per_example_keys_make_bits_per_dim_independent_of_the_batching():
    """With one key per example and rk4, example b's dequantization draws and probe come from
    keys[b] alone: the bits/dim of 6 images in one batch are those of the images in two batches,
    one of them reordered, each with its examples' keys. With one key for the batch they are not.
    """
    g, q = gaussian(), rotation()
    denoise, _ = rotated(g, q)
    images = jnp.asarray(np.random.default_rng(13).integers(0, 256, (6, D)), jnp.uint8)
    keys = jax.random.split(jax.random.key(14), 6)  # [6]
    ode = ODESettings(SIGMA_MIN, SIGMA_MAX, divergence="hutchinson", solver="rk4", steps=8)
    run = jax.jit(functools.partial(bits_per_dim, denoise, ode=ode, num_dequant_samples=2))

    whole = run(images, keys).bits_per_dim  # [6]
    order = np.array([5, 3, 4])
    parts = np.concatenate(
        [run(images[:3], keys[:3]).bits_per_dim, run(images[order], keys[order]).bits_per_dim]
    )
    np.testing.assert_allclose(parts, whole[np.r_[0:3, order]], rtol=1e-6)
    one_key = run(images[order], keys[0]).bits_per_dim
    assert not np.allclose(one_key, run(images, keys[0]).bits_per_dim[order], rtol=1e-3)


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_bits_per_dim_of_a_discretized_gaussian(data_range):
    """8-bit data k = floor(z), z ~ N(m, s^2) per pixel on the [0, 256) scale, with the model's
    Gaussian on the data_range scale. Its exact discrete NLL is -sum log(Phi((k + 1 - m) / s) -
    Phi((k - m) / s)); with s >> 1 bin the dequantized bound is tight, so bits_per_dim must match
    it. Also checks the bookkeeping bpd = E_u[NLL_x] / (D ln 2) + 8 - log2(hi - lo)."""
    lo, hi = data_range
    shape, dim = (2, 2, 3), 12
    rng = np.random.default_rng(9)
    m_z = rng.uniform(100.0, 156.0, dim)  # [dim] on the 256-level scale
    s_z = rng.uniform(15.0, 30.0, dim)
    z = rng.normal(m_z, s_z, (64, dim))  # [64, dim]
    k = np.floor(z)
    assert k.min() >= 0 and k.max() <= 255
    images = jnp.asarray(k.reshape(64, *shape), jnp.uint8)
    p_k = norm.cdf((k + 1 - m_z) / s_z) - norm.cdf((k - m_z) / s_z)
    want = -np.log(p_k).sum(-1) / (dim * LN2)  # [64] exact bits/dim of the discrete data

    scale = (hi - lo) / 256.0
    model = as_dtype(
        GaussianMixture(
            weights=np.ones(1), means=(lo + scale * m_z)[None], variances=((scale * s_z) ** 2)[None]
        ),
        jnp.float32,
    )

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        return model.denoise(x.reshape(x.shape[0], dim), sigma).reshape(x.shape)

    run = jax.jit(
        lambda im, key: bits_per_dim(
            denoise,
            im,
            key,
            ode=ODESettings(SIGMA_MIN, SIGMA_MAX, steps=64),
            data_range=data_range,
            num_dequant_samples=4,
        )
    )
    out = run(images, jax.random.key(10))
    assert out.bits_per_dim.shape == (64,) and out.continuous.nats.shape == (4, 64)
    offset = 8.0 - math.log2(hi - lo)  # 7 for [-1, 1], 8 for [0, 1]
    np.testing.assert_allclose(
        out.bits_per_dim, out.continuous.bits_per_dim.mean(0) + offset, rtol=1e-6
    )
    np.testing.assert_allclose(out.nats, out.bits_per_dim * dim * LN2, rtol=1e-6)
    err = np.asarray(out.bits_per_dim) - want
    assert np.max(np.abs(err)) < 0.01, np.max(np.abs(err))  # measured 5.3e-3
    assert abs(err.mean()) < 2e-3, err.mean()  # measured -4e-5

    # The dequantized points lie in their bins, on the model's scale.
    x = np.asarray(dequantize(images, jax.random.key(11), data_range))
    z_back = (x - lo) / scale
    assert np.all(z_back >= k.reshape(x.shape) - 1e-3) and np.all(z_back < k.reshape(x.shape) + 1)


def test_dopri5_that_runs_out_of_steps_returns_nan():
    g = gaussian()
    x = g.sample_noised(jax.random.key(12), 4, SIGMA_MIN)
    out = solve(g.denoise, x, divergence="exact", solver="dopri5", max_steps=3)
    assert np.all(np.isnan(out.nats))


def _denoise(x, sigma):
    return jnp.zeros_like(x)


X = jnp.zeros((2, 3))
OK = dict(sigma_min=0.01, sigma_max=10.0)
ODE = ODESettings(**OK)
EXACT = ODESettings(divergence="exact", **OK)
IMAGES = jnp.zeros((2, 4), jnp.uint8)
KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ODESettings(divergence="trace", **OK), "divergence='trace'"),
        (lambda: ODESettings(probe="uniform", **OK), "probe='uniform'"),
        (lambda: ODESettings(solver="euler", **OK), "euler"),
        (lambda: ODESettings(sigma_min=0.0, sigma_max=1.0), "sigma_min=0.0"),
        (lambda: ODESettings(sigma_min=2.0, sigma_max=1.0), "sigma_max=1.0"),
        (lambda: ODESettings(sigma_min=1.0, sigma_max=math.inf), "sigma_max=inf"),
        (lambda: ODESettings(steps=0, **OK), "steps=0"),
        (lambda: ODESettings(max_steps=2.5, **OK), "max_steps=2.5"),
        (lambda: ODESettings(rtol=0.0, **OK), "rtol=0.0"),
        (lambda: nll(_denoise, X, None, ode=OK), "ode=.*accepted: an ODESettings"),
        (lambda: nll(_denoise, X, None, ode=ODE), "needs a key"),
        (lambda: nll(_denoise, X, jax.random.split(KEY, 3), ode=ODE), r"shape \(3,\).*\(2,\)"),
        (lambda: nll(_denoise, X, 0, ode=ODE), "key of type int"),
        (lambda: nll(_denoise, jnp.zeros(3), None, ode=EXACT), r"\(3,\)"),
        (lambda: bits_per_dim(_denoise, jnp.zeros((2, 4)), KEY, ode=ODE), "dtype float32"),
        (lambda: bits_per_dim(_denoise, np.full((2, 4), 300), KEY, ode=ODE), "image value 300"),
        (lambda: bits_per_dim(_denoise, np.full((2, 4), -1), KEY, ode=ODE), "image value -1"),
        (
            lambda: bits_per_dim(_denoise, IMAGES, KEY, ode=ODE, data_range=(1, -1)),
            r"data_range=\(1.0, -1.0\)",
        ),
        (
            lambda: bits_per_dim(_denoise, IMAGES, KEY, ode=ODE, num_dequant_samples=0),
            "num_dequant_samples=0",
        ),
        (lambda: bits_per_dim(_denoise, IMAGES, KEY, ode=None), "ode=None"),
        (
            lambda: bits_per_dim(_denoise, IMAGES, jax.random.split(KEY, (2, 2)), ode=ODE),
            r"shape \(2, 2\)",
        ),
    ],
)
def test_bad_input_is_a_one_line_user_error(call, match):
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
