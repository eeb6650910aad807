"""Ancestral samplers (ddpm, ddim, euler_ancestral, dpm_2_ancestral) and dpm_2: parity with the
diffusers schedulers on the exact denoiser of a Gaussian mixture (float64, the same noise injected
into diffusers), and checks of the noise on Gaussian data N(0, S^2) with the exact denoiser."""

import itertools
import pathlib
import sys

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
)

from jaxdiff import samplers
from jaxdiff.benchmarks.diffusers_reference import SD_SCHEDULE
from jaxdiff.diffusion import karras
from jaxdiff.errors import UserError
from jaxdiff.samplers.noise import independent_noise

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import assert_misses, initial_noise, jax_denoiser, run_diffusers, sigma_at

SD = SD_SCHEDULE
STOCHASTIC = ("ddpm", "euler_ancestral", "dpm_2_ancestral")
ALL = ("ddpm", "ddim", "euler_ancestral", "dpm_2", "dpm_2_ancestral")
S = 0.5  # std of the Gaussian data


def gaussian_denoiser(x, sigma):
    """The exact denoiser of N(0, S^2) data."""
    return S**2 / (S**2 + sigma**2) * x


def base_sigmas(scheduler) -> np.ndarray:
    """The sigmas of a scheduler's steps, then the sigma it ends at. [n + 1]

    KDPM2 schedulers interleave a midpoint timestep after every step but the first and last;
    DDIM ends at the sigma of `final_alpha_cumprod` (> 0 with set_alpha_to_one=False)."""
    timesteps = np.asarray(scheduler.timesteps, np.float64)
    if hasattr(scheduler, "sigmas_interpol"):
        timesteps = timesteps[::2]
    final_alpha = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    final = np.sqrt((1.0 - final_alpha) / final_alpha)
    return np.asarray([*(sigma_at(scheduler, t) for t in timesteps), final])


def inject_noise(monkeypatch, module, key, sigmas, shape) -> None:
    """Make the scheduler module's `randn_tensor` hand out, in order, the noise that jaxdiff's
    "independent" source gives for each interval of `sigmas`."""
    with jax.enable_x64(True):
        noise_fn = independent_noise(key, shape, jnp.float64)
        draws = iter([np.array(noise_fn(a, b)) for a, b in itertools.pairwise(sigmas)])
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: torch.from_numpy(next(draws)))


def recording(denoise, calls: list):
    """`denoise` that appends the sigma of every call it makes to `calls`."""

    def wrapped(x, sigma):
        jax.debug.callback(lambda s: calls.append(float(s)), sigma, ordered=True)
        return denoise(x, sigma)

    return wrapped


SCHED = diffusers.schedulers
LEADING = {"steps_offset": 1, "timestep_spacing": "leading"}  # SD's config
PARITY = [
    # name, scheduler, scheduler config, steps, sampler options (also DDIM's step kwargs), module
    # whose randn_tensor gets the injected noise (None: deterministic)
    pytest.param("ddpm", DDPMScheduler, LEADING, 10, {}, SCHED.scheduling_ddpm, id="ddpm"),
    pytest.param("ddpm", DDPMScheduler, {"timestep_spacing": "linspace"}, 10, {},
                 SCHED.scheduling_ddpm, id="ddpm-linspace"),
    pytest.param("ddim", DDIMScheduler, {**LEADING, "set_alpha_to_one": True}, 10, {}, None,
                 id="ddim"),
    pytest.param("ddim", DDIMScheduler, {**LEADING, "set_alpha_to_one": False}, 10, {}, None,
                 id="ddim-final-alpha-0"),
    pytest.param("ddim", DDIMScheduler, {"timestep_spacing": "trailing"}, 8, {}, None,
                 id="ddim-trailing"),
    pytest.param("ddim", DDIMScheduler, {**LEADING, "set_alpha_to_one": False}, 10, {"eta": 0.5},
                 SCHED.scheduling_ddim, id="ddim-eta-0.5-final-alpha-0"),
    pytest.param("ddim", DDIMScheduler, LEADING, 6, {"eta": 1.0}, SCHED.scheduling_ddim,
                 id="ddim-eta-1"),
    pytest.param("euler_ancestral", EulerAncestralDiscreteScheduler, LEADING, 10, {},
                 SCHED.scheduling_euler_ancestral_discrete, id="euler_ancestral"),
    pytest.param("euler_ancestral", EulerAncestralDiscreteScheduler,
                 {"timestep_spacing": "trailing"}, 7, {},
                 SCHED.scheduling_euler_ancestral_discrete, id="euler_ancestral-trailing"),
    pytest.param("dpm_2", KDPM2DiscreteScheduler, LEADING, 10, {}, None, id="dpm_2"),
    pytest.param("dpm_2", KDPM2DiscreteScheduler, {}, 10, {}, None, id="dpm_2-linspace"),
    pytest.param("dpm_2_ancestral", KDPM2AncestralDiscreteScheduler, LEADING, 10, {},
                 SCHED.scheduling_k_dpm_2_ancestral_discrete, id="dpm_2_ancestral"),
    pytest.param("dpm_2_ancestral", KDPM2AncestralDiscreteScheduler,
                 {"timestep_spacing": "trailing"}, 5, {},
                 SCHED.scheduling_k_dpm_2_ancestral_discrete, id="dpm_2_ancestral-trailing"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "scheduler_cls", "config", "steps", "options", "module"), PARITY)
def test_matches_diffusers(name, scheduler_cls, config, steps, options, module, monkeypatch):
    """Same final sample (float64, to 1e-5) and the same sigmas of the denoiser calls."""
    clip = {"clip_sample": False} if scheduler_cls in (DDPMScheduler, DDIMScheduler) else {}
    scheduler = scheduler_cls(**SD, **config, **clip)
    scheduler.set_timesteps(steps)
    sigmas = base_sigmas(scheduler)
    x = initial_noise(8, sigmas[0])
    key = jax.random.key(5) if module is not None else None
    if module is not None:
        inject_noise(monkeypatch, module, key, sigmas, x.shape)
    step_kwargs = options if scheduler_cls is DDIMScheduler else None
    want, want_calls = run_diffusers(scheduler, x, sigmas[0], sigmas[-1], step_kwargs)
    calls = []
    with jax.enable_x64(True):
        denoise = recording(jax_denoiser(), calls)
        got = samplers.get(name)(denoise, jnp.asarray(x), jnp.asarray(sigmas), key, **options)
        jax.effects_barrier()
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(calls, want_calls, rtol=1e-5)
    with jax.enable_x64(True):
        wrong = samplers.get(name)(
            jax_denoiser(), jnp.asarray(1.05 * x), jnp.asarray(sigmas), key, **options
        )
    assert_misses(wrong, want, atol=1e-5)
    evals = samplers.evals_per_step(name)  # per step, but one for a step into sigma = 0
    assert len(calls) == evals * (steps - 1) + (1 if sigmas[-1] == 0 else evals)


def test_eta_zero_is_deterministic_and_needs_no_key():
    x = jax.random.normal(jax.random.key(0), (3, 4)) * 10.0
    sigmas = karras(6, 0.02, 10.0)
    euler = samplers.get("euler")(gaussian_denoiser, x, sigmas)
    dpm_2 = samplers.get("dpm_2")(gaussian_denoiser, x, sigmas)
    np.testing.assert_allclose(samplers.get("ddim")(gaussian_denoiser, x, sigmas), euler, rtol=1e-6)
    ancestral = samplers.get("euler_ancestral")(gaussian_denoiser, x, sigmas, eta=0.0)
    np.testing.assert_allclose(ancestral, euler, rtol=1e-6)
    dpm_2_eta0 = samplers.get("dpm_2_ancestral")(gaussian_denoiser, x, sigmas, eta=0.0)
    np.testing.assert_allclose(dpm_2_eta0, dpm_2, rtol=1e-6)
    assert not np.allclose(dpm_2, euler, rtol=1e-3)


def test_ddpm_is_euler_ancestral_with_eta_one():
    x = jax.random.normal(jax.random.key(0), (3, 4)) * 10.0
    sigmas, key = karras(5, 0.02, 10.0), jax.random.key(1)
    ddpm = samplers.get("ddpm")(gaussian_denoiser, x, sigmas, key)
    ddim = samplers.get("ddim")(gaussian_denoiser, x, sigmas, key, eta=1.0)
    np.testing.assert_allclose(ddpm, ddim, rtol=1e-6)


def test_errors():
    x, sigmas = jnp.ones((1, 2)), karras(4, 0.1, 1.0)
    for name in (*STOCHASTIC, "ddim"):
        options = {"eta": 0.5} if name == "ddim" else {}
        with pytest.raises(UserError, match=f"sampler '{name}' adds noise and needs a key"):
            samplers.get(name)(gaussian_denoiser, x, sigmas, **options)
    with pytest.raises(UserError, match=r"'ddim': eta=-0.5 must be >= 0"):
        samplers.get("ddim")(gaussian_denoiser, x, sigmas, jax.random.key(0), eta=-0.5)
    with pytest.raises(
        UserError, match="noise='pink' is not supported; accepted: independent, brownian"
    ):
        samplers.get("euler_ancestral")(
            gaussian_denoiser, x, sigmas, jax.random.key(0), noise="pink"
        )
    with pytest.raises(UserError, match="'ddpm' does not take option 'eta'"):
        samplers.get("ddpm")(gaussian_denoiser, x, sigmas, jax.random.key(0), eta=1.0)


def test_evals_per_step():
    assert [samplers.evals_per_step(name) for name in ALL] == [1, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("name", "noise"),
    [
        ("ddpm", "independent"),
        ("euler_ancestral", "independent"),
        ("dpm_2_ancestral", "independent"),
        ("euler_ancestral", "brownian"),
        ("dpm_2_ancestral", "brownian"),
    ],
)
def test_reproducible_by_key(name, noise):
    sampler = samplers.get(name)
    x = jax.random.normal(jax.random.key(2), (2, 3)) * 10.0
    sigmas = karras(5, 0.05, 10.0)
    keys = jax.random.split(jax.random.key(7), 2)[jnp.array([0, 0, 1])]
    a, b, c = jax.vmap(lambda k: sampler(gaussian_denoiser, x, sigmas, k, noise=noise))(keys)
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bf16_input_gives_finite_float32_output():
    def bf16_denoiser(x, sigma):
        return gaussian_denoiser(x.astype(jnp.bfloat16), sigma.astype(jnp.bfloat16))

    x = (jax.random.normal(jax.random.key(3), (2, 8)) * 80.0).astype(jnp.bfloat16)
    for name in ALL:
        out = samplers.get(name)(bf16_denoiser, x, karras(6, 0.002, 80.0), jax.random.key(0))
        assert out.dtype == jnp.float32, name
        assert bool(jnp.all(jnp.isfinite(out))), name


@pytest.mark.parametrize(
    ("name", "options", "sigma_end"),
    [
        ("ddpm", {}, 0.0),
        ("dpm_2_ancestral", {}, 0.0),
        ("ddim", {"eta": 0.5}, 0.3),
        ("dpm_2_ancestral", {}, 0.3),
    ],
)
def test_samples_gaussian_data(name, options, sigma_end):
    """From x ~ N(0, S^2 + 80^2), many steps of an ancestral sampler give N(0, S^2 + sigma_end^2)
    (16384 samples: the std of the estimated std is 0.6%). The bias is first order in the step
    size, about 2% for ddpm at 400 Karras steps."""
    x = jax.random.normal(jax.random.key(0), (16384, 1)) * np.sqrt(S**2 + 80.0**2)
    sigmas = karras(400, 0.002, 80.0) if sigma_end == 0 else karras(400, sigma_end, 80.0)[:-1]
    out = samplers.get(name)(gaussian_denoiser, x, sigmas, jax.random.key(1), **options)
    assert float(jnp.std(out)) == pytest.approx(np.sqrt(S**2 + sigma_end**2), rel=0.04)
    assert abs(float(jnp.mean(out))) < 0.02


@pytest.mark.parametrize(("name", "rtol"), [("ddim", 0.02), ("dpm_2", 1e-3)])
def test_deterministic_schedule_ending_above_zero(name, rtol):
    """On a schedule ending at 0.5 the deterministic samplers stop on the exact PF-ODE solution
    `x * sqrt(S^2 + 0.5^2) / sqrt(S^2 + 10^2)` (first and second order in the step size)."""
    x = jax.random.normal(jax.random.key(4), (4, 4)) * np.sqrt(S**2 + 100.0)
    out = samplers.get(name)(gaussian_denoiser, x, karras(40, 0.5, 10.0)[:-1])
    np.testing.assert_allclose(out, x * np.sqrt(S**2 + 0.25) / np.sqrt(S**2 + 100.0), rtol=rtol)


def test_one_step_into_zero_gives_the_denoised_sample():
    x = jnp.full((1, 2), 2.0)
    for name in ALL:
        out = samplers.get(name)(gaussian_denoiser, x, jnp.array([3.0, 0.0]), jax.random.key(0))
        np.testing.assert_allclose(out, gaussian_denoiser(x, 3.0), atol=1e-6, err_msg=name)


def test_jits_with_traced_sigmas():
    sampler = samplers.get("dpm_2_ancestral")
    jitted = jax.jit(lambda x, s, k: sampler(gaussian_denoiser, x, s, k))
    x, sigmas, key = jnp.ones((2, 3)) * 5.0, karras(4, 0.1, 5.0), jax.random.key(0)
    np.testing.assert_allclose(
        jitted(x, sigmas, key), sampler(gaussian_denoiser, x, sigmas, key), rtol=1e-5
    )
