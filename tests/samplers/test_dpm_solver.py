"""DPM-Solver samplers: parity with diffusers' DPM-Solver schedulers on a Gaussian mixture, and
checks on Gaussian data `N(MU, S^2)`, whose PF-ODE has the exact solution
`x(sigma) = MU + (x_T - MU) sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_T^2)`."""

import inspect
import itertools
import pathlib
import sys
import textwrap

import diffusers.schedulers.scheduling_dpmsolver_multistep as multistep_module
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler

from jaxdiff import samplers
from jaxdiff.benchmarks.diffusers_reference import SD_SCHEDULE
from jaxdiff.benchmarks.mixtures import reference_solution
from jaxdiff.diffusion import karras
from jaxdiff.errors import UserError
from jaxdiff.samplers.noise import independent_noise

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import (
    MIXTURE,
    assert_misses,
    initial_noise,
    jax_denoiser,
    run_diffusers,
    scheduler_sigmas,
    sigma_at,
)

SD = SD_SCHEDULE
MU, S = 0.3, 0.5
DETERMINISTIC = ("dpmpp_2m", "dpmpp_3m", "dpm_solver", "dpm_adaptive")
STOCHASTIC = ("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s_ancestral", "dpmpp_sde")
KEY = jax.random.key(3)


def gaussian_denoiser(x, sigma):
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def gaussian_solution(x_start, sigma_start, sigma):
    return MU + (x_start - MU) * np.sqrt(S**2 + sigma**2) / np.sqrt(S**2 + sigma_start**2)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def diffusers_run(cls, n, monkeypatch=None, **config):
    """`(sigmas, x, want)`: the scheduler's sigmas in float64 (they replace its own float32
    copy), the initial noise and diffusers' final sample, after checking that the model was
    called once at each sigma but the last. With `monkeypatch`, the SDE noise of each step is
    jaxdiff's independent noise for KEY."""
    sched = cls(**SD, **config)
    sched.set_timesteps(n)
    final = sigma_at(sched, 0) if config.get("final_sigmas_type") == "sigma_min" else 0.0
    sigmas = scheduler_sigmas(sched, final)
    sched.sigmas = torch.from_numpy(sigmas)
    x = initial_noise(8, sigmas[0])
    if monkeypatch is not None:
        with jax.enable_x64(True):
            noise = independent_noise(KEY, x.shape, jnp.float64)
            steps = iter(
                [torch.from_numpy(np.array(noise(a, b))) for a, b in itertools.pairwise(sigmas)]
            )
        monkeypatch.setattr(multistep_module, "randn_tensor", lambda *a, **k: next(steps))
    want, calls = run_diffusers(sched, x, sigmas[0], sigmas[-1])
    np.testing.assert_allclose(calls, sigmas[:-1], rtol=1e-12)
    return sigmas, x, want


def run_jax(name, x, sigmas, key=None, **options):
    with jax.enable_x64(True):
        out = samplers.get(name)(
            jax_denoiser(), jnp.asarray(x), jnp.asarray(sigmas), key, **options
        )
    return np.asarray(out)


LEADING = {"timestep_spacing": "leading", "steps_offset": 1}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}
# diffusers' multistep defaults where those of the samplers with k-diffusion's names differ.
DIFFUSERS_2M = {"lower_order_final": True}
DIFFUSERS_3M = {"solver_type": "midpoint", "lower_order_final": True}


@pytest.mark.parametrize(
    ("n", "options", "config"),
    [
        (10, {}, LEADING),
        (20, {"solver_type": "heun"}, {"solver_type": "heun", "timestep_spacing": "trailing"}),
        (8, {"lower_order_final": False}, {"lower_order_final": False, **SIGMA_MIN, **LEADING}),
        (10, {"order": 3}, {"solver_order": 3, **LEADING}),
        (16, {"order": 3}, {"solver_order": 3, "timestep_spacing": "linspace", **SIGMA_MIN}),
        (
            12,
            {"order": 3, "solver_type": "heun", "lower_order_final": False},
            {"solver_order": 3, "solver_type": "heun", "lower_order_final": False, **LEADING},
        ),
    ],
)
def test_multistep_matches_diffusers(n, options, config):
    """DPMSolverMultistepScheduler("dpmsolver++"). Its `step` rounds the sample to float32, hence
    the tolerance."""
    sigmas, x, want = diffusers_run(DPMSolverMultistepScheduler, n, **config)
    options = dict(options)
    name = "dpmpp_3m" if options.pop("order", 2) == 3 else "dpmpp_2m"
    options = DIFFUSERS_2M | options
    np.testing.assert_allclose(run_jax(name, x, sigmas, **options), want, atol=1e-5)
    assert_misses(run_jax(name, 1.05 * x, sigmas, **options), want, atol=1e-5)


@pytest.mark.parametrize(
    ("n", "options", "config"),
    [
        (10, {}, {}),
        (11, {"order": 3}, {"solver_order": 3}),
        (9, {"order": 3, "solver_type": "heun", "lower_order_final": False}, SIGMA_MIN),
    ],
)
def test_singlestep_matches_diffusers(n, options, config):
    """DPMSolverSinglestepScheduler("dpmsolver++"), which computes in float64 here."""
    config = {
        "solver_order": options.get("order", 2),
        "solver_type": options.get("solver_type", "midpoint"),
        "lower_order_final": options.get("lower_order_final", True),
        **config,
    }
    sigmas, x, want = diffusers_run(DPMSolverSinglestepScheduler, n, **config)
    np.testing.assert_allclose(run_jax("dpm_solver", x, sigmas, **options), want, atol=1e-10)


def _fix_diffusers_third_order_sde(monkeypatch):
    """diffusers' third-order "sde-dpmsolver++" update weights D_2 by `(1 - e^{-2h} - 2h) /
    (2h)^2 - 1/2 = -(phi_3(2h) + 1)`; the exponential integrator (k-diffusion
    `sample_dpmpp_3m_sde`) has `-phi_3(2h)`, i.e. `+ 1/2`. Patch that one sign."""
    cls = DPMSolverMultistepScheduler
    src = textwrap.dedent(inspect.getsource(cls.multistep_dpm_solver_third_order_update))
    wrong = "/ (2.0 * h) ** 2 - 0.5)) * D2"
    if wrong not in src:
        return
    namespace = {}
    exec(src.replace(wrong, "/ (2.0 * h) ** 2 + 0.5)) * D2"), vars(multistep_module), namespace)
    name = "multistep_dpm_solver_third_order_update"
    monkeypatch.setattr(cls, name, namespace[name])


@pytest.mark.parametrize(
    ("name", "options", "config"),
    [
        ("dpmpp_2m_sde", DIFFUSERS_2M, LEADING),
        (
            "dpmpp_2m_sde",
            {"solver_type": "heun", **DIFFUSERS_2M},
            {"solver_type": "heun", **SIGMA_MIN},
        ),
        ("dpmpp_3m_sde", DIFFUSERS_3M, {"solver_order": 3, **LEADING}),
    ],
)
def test_sde_multistep_matches_diffusers(name, options, config, monkeypatch):
    """DPMSolverMultistepScheduler("sde-dpmsolver++") (eta = 1) fed jaxdiff's noise, with
    diffusers' defaults passed as options (the samplers default to k-diffusion's)."""
    if name == "dpmpp_3m_sde":
        _fix_diffusers_third_order_sde(monkeypatch)
    config = {"algorithm_type": "sde-dpmsolver++", **config}
    sigmas, x, want = diffusers_run(DPMSolverMultistepScheduler, 10, monkeypatch, **config)
    np.testing.assert_allclose(run_jax(name, x, sigmas, KEY, **options), want, atol=1e-5)


@pytest.mark.parametrize(
    ("stochastic", "deterministic", "options"),
    [
        ("dpmpp_2m_sde", "dpmpp_2m", {}),
        ("dpmpp_3m_sde", "dpmpp_3m", {"solver_type": "heun", "lower_order_final": False}),
        ("dpmpp_sde", "dpmpp_2s_ancestral", {"eta": 0.0}),
    ],
)
def test_eta_zero_is_deterministic(stochastic, deterministic, options, x64):
    """With eta = 0 the SDE samplers need no key and reduce to their ODE counterparts (for
    `dpmpp_sde`, with r = 1/2, to DPM-Solver++(2S): `dpmpp_2s_ancestral` with eta = 0)."""
    x = jax.random.normal(jax.random.key(0), (2, 3), jnp.float64) * 20.0
    sigmas = karras(7, 0.02, 20.0).astype(jnp.float64)
    want = samplers.get(deterministic)(gaussian_denoiser, x, sigmas, **options)
    got = samplers.get(stochastic)(gaussian_denoiser, x, sigmas, **{**options, "eta": 0.0})
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", DETERMINISTIC + STOCHASTIC)
def test_bf16_step_into_zero_is_the_denoised_value(name):
    """A bf16 state runs in float32, and a step into sigma = 0 is `x = D(x, sigma)`, with no NaN
    from log(0) (diffusers #9007)."""
    x = jnp.array([[2.0, -1.0, 0.5]], jnp.bfloat16)
    out = samplers.get(name)(gaussian_denoiser, x, jnp.array([3.0, 0.0]), KEY)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, gaussian_denoiser(x.astype(jnp.float32), 3.0), rtol=1e-6)


def test_lower_order_final_keeps_few_steps_accurate(x64):
    """Five steps of 3M down to sigma = 0.03 on the mixture: the third-order final steps of
    `lower_order_final=False` are unstable; the default lowers them and is far closer to the
    exact PF-ODE solution."""
    sigmas = np.asarray(karras(5, 0.03, 80.0), np.float64)[:-1]
    x = initial_noise(16, 80.0)
    want, _ = reference_solution(MIXTURE, x, 80.0, sigmas[-1])
    lowered = np.max(np.abs(run_jax("dpmpp_3m", x, sigmas) - want))
    full = np.max(np.abs(run_jax("dpmpp_3m", x, sigmas, lower_order_final=False) - want))
    assert lowered < 0.5 * full, (lowered, full)


@pytest.mark.parametrize(
    ("name", "std_rtol"),
    [
        ("dpmpp_2m_sde", 0.03),
        ("dpmpp_3m_sde", 0.03),
        ("dpmpp_2s_ancestral", 0.03),
        ("dpmpp_sde", 0.1),
    ],
)
def test_stochastic_samplers_sample_the_gaussian(name, std_rtol):
    """From x_T ~ N(MU, S^2 + sigma_T^2) the output should be distributed as N(MU, S^2), up to
    the discretisation bias of 40 steps. `dpmpp_sde`'s is larger with independent noise (its two
    noise draws per step are meant to be increments of one Brownian path)."""
    sigma_max = 20.0
    x = MU + jax.random.normal(jax.random.key(2), (2000, 2)) * np.sqrt(S**2 + sigma_max**2)
    out = samplers.get(name)(gaussian_denoiser, x, karras(40, 0.01, sigma_max), KEY)
    assert float(jnp.mean(out)) == pytest.approx(MU, abs=0.03)
    assert float(jnp.std(out)) == pytest.approx(S, rel=std_rtol)


def test_dpmpp_sde_converges_with_brownian_noise(x64):
    """With one Brownian path for every step count, 8 and 32 steps land near one solution: far
    closer to each other than to the result of another path."""
    x = MU + jax.random.normal(jax.random.key(4), (32, 2), jnp.float64) * 20.0

    def sampler(n):
        sigmas = karras(n, 0.05, 20.0).astype(jnp.float64)[:-1]
        dpmpp_sde = samplers.get("dpmpp_sde")
        return jax.jit(lambda key: dpmpp_sde(gaussian_denoiser, x, sigmas, key, noise="brownian"))

    coarse, fine = sampler(8), sampler(32)
    same_path = float(jnp.sqrt(jnp.mean((coarse(KEY) - fine(KEY)) ** 2)))
    other_path = float(jnp.sqrt(jnp.mean((fine(KEY) - fine(jax.random.key(4))) ** 2)))
    assert same_path < 0.4 * other_path, (same_path, other_path)


def test_dpm_adaptive_meets_its_tolerance(x64):
    """The error against the exact solution shrinks with rtol and stays within a small multiple
    of it; the denoiser calls are three per attempted step (order 3) plus the final denoising
    step."""
    calls = []

    def counted(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return gaussian_denoiser(x, sigma)

    x = MU + jax.random.normal(jax.random.key(5), (4, 8), jnp.float64) * 80.0
    sigmas = jnp.array([80.0, 0.01, 0.0])
    errors, evals = [], []
    for rtol in (1e-2, 1e-5):
        calls.clear()
        out = samplers.get("dpm_adaptive")(counted, x, sigmas, rtol=rtol, atol=rtol)
        want = gaussian_denoiser(gaussian_solution(x, 80.0, 0.01), 0.01)
        errors.append(float(jnp.max(jnp.abs(out - want))))
        jax.effects_barrier()
        evals.append(len(calls))
        assert errors[-1] < 10 * rtol, (rtol, errors)
        assert (evals[-1] - 1) % 3 == 0
    assert errors[1] < 0.01 * errors[0], errors
    assert evals[1] > evals[0], evals


def test_dpm_adaptive_order_2_ends_at_a_positive_last_sigma(x64):
    x = MU + jax.random.normal(jax.random.key(6), (2, 4), jnp.float64) * 10.0
    sigmas = jnp.array([10.0, 1.0, 0.2])
    out = samplers.get("dpm_adaptive")(gaussian_denoiser, x, sigmas, order=2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out, gaussian_solution(x, 10.0, 0.2), atol=1e-3)


@pytest.mark.parametrize("name", ["dpm_solver", "dpm_adaptive"])
def test_jit_with_traced_sigmas(name):
    sampler = samplers.get(name)
    x = jnp.ones((1, 2)) * 10.0
    sigmas = karras(6, 0.01, 10.0)
    jitted = jax.jit(lambda x, s: sampler(gaussian_denoiser, x, s))
    np.testing.assert_allclose(jitted(x, sigmas), sampler(gaussian_denoiser, x, sigmas), rtol=1e-6)


def test_evals_per_step():
    got = {name: samplers.evals_per_step(name) for name in DETERMINISTIC + STOCHASTIC}
    assert got == {
        "dpmpp_2m": 1,
        "dpmpp_3m": 1,
        "dpm_solver": 1,
        "dpm_adaptive": 3,
        "dpmpp_2m_sde": 1,
        "dpmpp_3m_sde": 1,
        "dpmpp_2s_ancestral": 2,
        "dpmpp_sde": 2,
    }


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("dpmpp_2m_sde", {}, "'dpmpp_2m_sde' adds noise and needs a key"),
        ("dpmpp_3m_sde", {"eta": 0.5}, "'dpmpp_3m_sde' adds noise and needs a key"),
        ("dpmpp_2s_ancestral", {}, "'dpmpp_2s_ancestral' adds noise and needs a key"),
        ("dpmpp_sde", {}, "'dpmpp_sde' adds noise and needs a key"),
        ("dpmpp_sde", {"eta": -1.0}, "eta=-1.0 must be >= 0"),
        ("dpmpp_2m_sde", {"eta": 0.0, "noise": "pink"}, "noise='pink' is not supported; accepted"),
        ("dpmpp_sde", {"eta": 0.0, "r": 1.0}, r"r=1.0 must be in \(0, 1\)"),
        (
            "dpmpp_2m",
            {"solver_type": "bh2"},
            "solver_type='bh2' is not supported; accepted: midpoint, heun",
        ),
        ("dpm_solver", {"order": 4}, "order=4 is not supported; accepted: 1, 2, 3"),
        ("dpm_adaptive", {"order": 1}, "order=1 is not supported; accepted: 2, 3"),
        ("dpm_adaptive", {"rtol": 0.0, "atol": 0.0}, "must be >= 0, not both 0"),
        ("dpm_adaptive", {"h_init": 0.0}, "h_init=0.0 must be > 0"),
    ],
)
def test_errors(name, options, match):
    with pytest.raises(UserError, match=match):
        samplers.get(name)(gaussian_denoiser, jnp.ones((1, 2)), karras(4, 0.1, 1.0), **options)
