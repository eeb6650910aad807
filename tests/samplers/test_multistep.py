"""Linear multistep samplers (lms, ipndm, deis, plms, pndm): parity with diffusers'
`LMSDiscreteScheduler`, `PNDMScheduler` and `DEISMultistepScheduler` and with k-diffusion's
`sample_ipndm`, convergence order on Gaussian data, warm-up and edge cases.

Gaussian data N(MU, S^2) has the exact PF-ODE solution
`x(sigma) = MU + (x_T - MU) * sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_T^2)`."""

import itertools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DEISMultistepScheduler, LMSDiscreteScheduler, PNDMScheduler

from jaxdiff import samplers
from jaxdiff.benchmarks.diffusers_reference import SD_SCHEDULE
from jaxdiff.diffusion import karras
from jaxdiff.errors import UserError
from jaxdiff.samplers import multistep

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import (
    assert_misses,
    initial_noise,
    jax_denoiser,
    run_diffusers,
    scheduler_sigmas,
    sigma_at,
)

SD = SD_SCHEDULE
NAMES = ("lms", "ipndm", "deis", "plms", "pndm")
S, MU = 0.5, 0.3


def gauss_denoise(x, sigma):
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def gauss_exact(x, sigma_start, sigma):
    return MU + (x - MU) * np.sqrt(S**2 + sigma**2) / np.sqrt(S**2 + sigma_start**2)


def derivative(x, sigma):
    return (x - gauss_denoise(x, sigma)) / sigma


def karras_to(n, sigma_end, sigma_max=80.0, rho=7.0):
    """n + 1 Karras sigmas from sigma_max down to sigma_end > 0, float64 numpy."""
    ramp = np.linspace(0.0, 1.0, n + 1)
    return (
        sigma_max ** (1 / rho) + ramp * (sigma_end ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def recording(denoise):
    """`denoise` that records the sigma of every call it makes at run time."""
    calls = []

    def wrapped(x, sigma):
        jax.debug.callback(lambda s: calls.append(float(s)), sigma, ordered=True)
        return denoise(x, sigma)

    return wrapped, calls


def compare(name, scheduler, sigmas, options=None, step_kwargs=None):
    """Run the scheduler and the sampler from the same noise; check the samples and the sigmas of
    the denoiser calls. Returns those sigmas."""
    x = initial_noise(8, sigmas[0])
    want, want_calls = run_diffusers(scheduler, x, sigmas[0], sigmas[-1], step_kwargs)
    with jax.enable_x64(True):
        denoise, calls = recording(jax_denoiser())
        got = samplers.get(name)(denoise, jnp.asarray(x), jnp.asarray(sigmas), **(options or {}))
        jax.effects_barrier()
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(calls, want_calls, rtol=1e-5)
    with jax.enable_x64(True):
        wrong = samplers.get(name)(
            jax_denoiser(), jnp.asarray(1.05 * x), jnp.asarray(sigmas), **(options or {})
        )
    assert_misses(wrong, want, atol=1e-5)
    return calls


@pytest.mark.parametrize(
    ("order", "config"),
    [(1, "leading"), (2, "trailing"), (3, "leading"), (4, "leading"), (4, "karras")],
)
def test_lms_matches_diffusers(order, config):
    if config == "karras":
        sched = LMSDiscreteScheduler(**SD, use_karras_sigmas=True)
    else:
        sched = LMSDiscreteScheduler(
            **SD, timestep_spacing=config, steps_offset=int(config == "leading")
        )
    sched.set_timesteps(10)
    sigmas = np.asarray(sched.sigmas, np.float64) if config == "karras" else scheduler_sigmas(sched)
    compare("lms", sched, sigmas, {"order": order}, {"order": order})


def pndm_grid(sched, final_sigma):
    """The sigmas of `PNDMScheduler`'s grid, whose `timesteps` repeat some of them."""
    return np.array([*(sigma_at(sched, t) for t in sched._timesteps[::-1]), final_sigma])


@pytest.mark.parametrize(
    ("n", "spacing", "alpha_to_one"),
    [(10, "leading", False), (20, "trailing", True), (1, "leading", False), (2, "leading", True)],
)
def test_plms_matches_diffusers(n, spacing, alpha_to_one):
    """Stable Diffusion's PNDM setting (skip_prk_steps): ends at the sigma of timestep 0 unless
    set_alpha_to_one; a first Heun step (two calls at the second sigma) for n >= 2."""
    sched = PNDMScheduler(
        **SD,
        skip_prk_steps=True,
        set_alpha_to_one=alpha_to_one,
        timestep_spacing=spacing,
        steps_offset=int(spacing == "leading"),
    )
    sched.set_timesteps(n)
    sigmas = pndm_grid(sched, 0.0 if alpha_to_one else sigma_at(sched, 0))
    calls = compare("plms", sched, sigmas)
    assert len(calls) == (n + 1 if n >= 2 else 1)


@pytest.mark.parametrize("n", [4, 10])
def test_pndm_matches_diffusers_given_its_midpoints(n):
    """Three PRK steps (four calls each, two at timestep t - step / 2), then PLMS: n + 9 calls."""
    sched = PNDMScheduler(**SD, skip_prk_steps=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(n)
    half = sched.config.num_train_timesteps // n // 2
    mid_sigmas = np.array([sigma_at(sched, t - half) for t in sched._timesteps[::-1]])
    sigmas = pndm_grid(sched, sigma_at(sched, 0))
    calls = compare("pndm", sched, sigmas, {"mid_sigmas": mid_sigmas})
    assert len(calls) == n + 9


@pytest.mark.parametrize(
    ("order", "n", "spacing", "lower_order_final"),
    [
        (1, 10, "linspace", True),
        (2, 10, "linspace", True),
        (3, 10, "linspace", True),
        (3, 10, "linspace", False),
        (3, 20, "trailing", True),
    ],
)
def test_deis_matches_diffusers(order, n, spacing, lower_order_final):
    sched = DEISMultistepScheduler(
        **SD, solver_order=order, lower_order_final=lower_order_final, timestep_spacing=spacing
    )
    sched.set_timesteps(n)
    sigmas = scheduler_sigmas(sched, sigma_at(sched, 0))
    # diffusers evaluates its closed-form DEIS coefficients from float32 sigmas, which cancel
    # (up to 4e-5 off at order 3); from float64 sigmas the two agree to 1e-13.
    sched.sigmas = torch.from_numpy(sigmas.copy())
    compare("deis", sched, sigmas, {"order": order, "lower_order_final": lower_order_final})


def kdiffusion_ipndm(x, sigmas, order):
    """k-diffusion's `sample_ipndm` (fixed Adams-Bashforth coefficients), in numpy."""
    coeffs = (
        [1.0],
        [3 / 2, -1 / 2],
        [23 / 12, -16 / 12, 5 / 12],
        [55 / 24, -59 / 24, 37 / 24, -9 / 24],
    )
    ds = []
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        denoised = gauss_denoise(x, sigma)
        ds.insert(0, (x - denoised) / sigma)
        step = sum(c * d for c, d in zip(coeffs[min(order, i + 1) - 1], ds, strict=False))
        x = denoised if sigma_next == 0 else x + (sigma_next - sigma) * step
    return x


@pytest.mark.parametrize("order", [2, 4])
def test_ipndm_is_kdiffusion_ipndm_on_equal_steps(order, x64):
    """Equal steps, ending at 0 (where both return the denoised sample)."""
    x = np.random.default_rng(0).normal(size=(3, 4)) * 4.0
    sigmas = np.linspace(4.0, 0.0, 9)
    got = samplers.get("ipndm")(gauss_denoise, jnp.asarray(x), jnp.asarray(sigmas), order=order)
    np.testing.assert_allclose(got, kdiffusion_ipndm(x, sigmas, order), rtol=1e-12)


def test_ipndm_second_order_is_kdiffusion_ipndm_v_on_uneven_steps(x64):
    """`sample_ipndm_v`'s closed-form coefficients are exact up to order 2 (see `ipndm`)."""
    x = np.random.default_rng(1).normal(size=(3, 4)) * 80.0
    sigmas = karras_to(8, 0.05)
    want, prev = x, None
    for sigma, sigma_next, sigma_prev in zip(
        sigmas[:-1], sigmas[1:], [None, *sigmas[:-2]], strict=True
    ):
        d = derivative(want, sigma)
        if prev is None:
            want = want + (sigma_next - sigma) * d
        else:
            ratio = (sigma_next - sigma) / (sigma - sigma_prev)
            want = want + (sigma_next - sigma) * ((2 + ratio) / 2 * d - ratio / 2 * prev)
        prev = d
    got = samplers.get("ipndm")(gauss_denoise, jnp.asarray(x), jnp.asarray(sigmas), order=2)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_ipndm_is_lms_away_from_zero(x64):
    x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64) * 80.0
    sigmas = jnp.asarray(karras_to(7, 0.05))
    want = samplers.get("lms")(gauss_denoise, x, sigmas)
    np.testing.assert_allclose(samplers.get("ipndm")(gauss_denoise, x, sigmas), want, rtol=1e-13)


@pytest.mark.parametrize("name", ["ipndm", "deis", "lms"])
def test_step_into_zero(name, x64):
    """ipndm (as k-diffusion's `sample_ipndm`) and deis (as diffusers' DPM-Solver with
    final_sigmas_type "zero") step into 0 to the denoised sample, at any number of steps (16 here,
    where deis' lower_order_final does not apply); lms keeps its order, as k-diffusion's."""
    x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64) * 80.0
    sigmas = jnp.asarray(np.append(karras_to(16, 0.05), 0.0))
    sampler = samplers.get(name)
    denoised = gauss_denoise(sampler(gauss_denoise, x, sigmas[:-1], order=3), sigmas[-2])
    out = sampler(gauss_denoise, x, sigmas, order=3)
    if name == "lms":
        assert not np.allclose(out, denoised, rtol=1e-8)
    else:
        np.testing.assert_allclose(out, denoised, rtol=1e-12)


@pytest.mark.parametrize(
    ("name", "options", "order"),
    [
        ("lms", {}, 4.0),
        ("ipndm", {"order": 3}, 3.0),
        ("deis", {"order": 3}, 3.0),
        ("plms", {}, 2.0),
    ],
)
def test_convergence_order_on_a_karras_grid(name, options, order, x64):
    """Slope of log-error against log-steps, Karras (rho = 7) from 80 down to 0.05. plms has fixed
    (equal-step) coefficients, so on uneven steps it is second order only."""
    sampler = samplers.get(name)
    x = jax.random.normal(jax.random.key(0), (4, 8), jnp.float64) * 80.0
    steps = np.array([64, 128, 256])
    errors = []
    for n in steps:
        out = sampler(gauss_denoise, x, jnp.asarray(karras_to(n, 0.05)), **options)
        errors.append(float(jnp.max(jnp.abs(out - gauss_exact(x, 80.0, 0.05)))))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.2), (errors, slope)


@pytest.mark.parametrize("name", NAMES)
def test_schedules_ending_at_zero_and_above_jit_bf16(name):
    """One jitted function (traced sigmas) for a schedule ending at 0 and one ending at 0.05; a
    bfloat16 input state gives a finite float32 result."""
    x = (jax.random.normal(jax.random.key(1), (4, 6)) * 20.0).astype(jnp.bfloat16)
    sampler = jax.jit(lambda x, sigmas: samplers.get(name)(gauss_denoise, x, sigmas))
    for sigmas in (karras(12, 0.05, 20.0), jnp.asarray(karras_to(12, 0.05, 20.0), jnp.float32)):
        out = sampler(x, sigmas)
        assert out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))
        want = gauss_exact(np.asarray(x, np.float32), 20.0, float(sigmas[-1]))
        np.testing.assert_allclose(out, want, atol=0.05)  # Euler is 0.15 off


def two_step_reference(name, x, s0, s1, s2):
    """Each sampler's two-step warm-up from s0 > s1 > s2 = 0, by hand."""
    d0 = derivative(x, s0)
    if name == "plms":  # a Heun step, then fixed second-order Adams-Bashforth
        x1 = x + (s1 - s0) * (d0 + derivative(x + (s1 - s0) * d0, s1)) / 2
        return x1 + (s2 - s1) * (3 * derivative(x1, s1) - d0) / 2
    if name == "pndm":  # a PRK step with the midpoint sqrt(s0 s1), then the same
        mid = np.sqrt(s0 * s1)
        d1 = derivative(x + (mid - s0) * d0, mid)
        d2 = derivative(x + (mid - s0) * d1, mid)
        d3 = derivative(x + (s1 - s0) * d2, s1)
        x1 = x + (s1 - s0) * (d0 + 2 * d1 + 2 * d2 + d3) / 6
        return x1 + (s2 - s1) * (3 * derivative(x1, s1) - d0) / 2
    x1 = x + (s1 - s0) * d0
    if name == "lms":  # variable-step second-order Adams-Bashforth
        h, h_prev = s2 - s1, s1 - s0
        return x1 + h * ((1 + h / (2 * h_prev)) * derivative(x1, s1) - h / (2 * h_prev) * d0)
    # ipndm: into 0, the denoised sample; deis: lower_order_final, an Euler (DDIM) step
    return gauss_denoise(x1, s1)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_is_euler_and_two_steps_warm_up(name, x64):
    sampler = samplers.get(name)
    x = jax.random.normal(jax.random.key(2), (3, 4), jnp.float64) * 3.0
    want = x + (0.5 - 3.0) * derivative(x, 3.0)
    np.testing.assert_allclose(sampler(gauss_denoise, x, jnp.array([3.0, 0.5])), want, rtol=1e-12)
    got = sampler(gauss_denoise, x, jnp.array([3.0, 0.7, 0.0]))
    np.testing.assert_allclose(got, two_step_reference(name, x, 3.0, 0.7, 0.0), rtol=1e-12)


def test_deis_weights_in_float32_with_small_steps():
    """On 1000 Karras steps the closed-form DEIS weights would cancel to 1e-2 relative error in
    float32 (`multistep._exp_moments`); the sampler stays within float32 rounding of float64."""
    sigmas = np.asarray(karras(1000, 0.002, 80.0))
    weights = jax.jit(multistep._ab_weights, static_argnums=(0, 3))
    for i in (100, 500, 995):
        past, sigma_next = sigmas[[i, i - 1, i - 2]], sigmas[i + 1]
        w32 = weights("log_sigma", jnp.asarray(past), jnp.asarray(sigma_next), 3)
        with jax.enable_x64(True):
            past64, next64 = jnp.asarray(past, jnp.float64), jnp.asarray(sigma_next, jnp.float64)
            w64 = weights("log_sigma", past64, next64, 3)
        np.testing.assert_allclose(w32, w64, rtol=1e-4)
    x = jax.random.normal(jax.random.key(3), (4, 8)) * 80.0
    sigmas = karras(200, 0.002, 80.0)
    deis = samplers.get("deis")
    out32 = deis(gauss_denoise, x, sigmas, order=3)
    with jax.enable_x64(True):
        out64 = deis(
            gauss_denoise, jnp.asarray(x, jnp.float64), jnp.asarray(sigmas, jnp.float64), order=3
        )
    np.testing.assert_allclose(out32, out64, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "order", "accepted"),
    [
        ("lms", 5, "1, 2, 3, 4"),
        ("ipndm", 0, "1, 2, 3, 4"),
        ("deis", 4, "1, 2, 3"),
        ("lms", 2.5, "1, 2"),
    ],
)
def test_bad_order_is_a_user_error(name, order, accepted):
    with pytest.raises(
        UserError, match=f"'{name}': order={order} is not supported; accepted: {accepted}"
    ):
        samplers.get(name)(gauss_denoise, jnp.ones((1, 2)), jnp.array([1.0, 0.0]), order=order)


def test_bad_options_are_user_errors():
    sigmas = jnp.array([2.0, 1.0, 0.0])
    with pytest.raises(UserError, match=r"mid_sigmas must have shape \(2,\), one per interval"):
        samplers.get("pndm")(gauss_denoise, jnp.ones((1, 2)), sigmas, mid_sigmas=jnp.ones(3))
    with pytest.raises(UserError, match="'plms' does not take option 'order'"):
        samplers.get("plms")(gauss_denoise, jnp.ones((1, 2)), sigmas, order=2)


def test_evals_per_step():
    assert {name: samplers.evals_per_step(name) for name in NAMES} == {
        "lms": 1,
        "ipndm": 1,
        "deis": 1,
        "plms": 1,
        "pndm": 4,
    }
