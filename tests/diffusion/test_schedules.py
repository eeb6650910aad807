"""Sampling schedules: formulas, diffusers' discrete timestep spacings, no duplicated last
sigma, errors."""

import inspect
import re

import numpy as np
import pytest

from jaxdiff.diffusion import (
    EDM,
    VPCosine,
    VPDiscrete,
    discrete,
    discrete_timesteps,
    exponential,
    karras,
    logsnr_uniform,
    make_process,
    make_sigmas,
    polyexponential,
    vp_uniform_time,
)
from jaxdiff.diffusion.schedules import SPACINGS
from jaxdiff.errors import UserError

# The betas of VPDiscrete() (Stable Diffusion's), as diffusers scheduler settings.
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def _check_shape(sigmas, n):
    s = np.asarray(sigmas)
    assert s.shape == (n + 1,)
    assert s[-1] == 0.0 and np.all(s[:-1] > 0), "exactly one trailing 0"
    assert np.all(np.diff(s) < 0), "strictly descending: no duplicated last sigma"


@pytest.mark.parametrize("n", [1, 2, 5, 40])
@pytest.mark.parametrize("rho", [1.0, 7.0])
def test_karras_formula(n, rho):
    sigmas = karras(n, 0.002, 80.0, rho)
    _check_shape(sigmas, n)
    i = np.arange(n)
    ramp = i / (n - 1) if n > 1 else i * 0.0
    expected = (80.0 ** (1 / rho) + ramp * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    np.testing.assert_allclose(np.asarray(sigmas)[:-1], expected, rtol=1e-6)
    assert float(sigmas[0]) == pytest.approx(80.0)
    if n > 1:
        assert float(sigmas[-2]) == pytest.approx(0.002, rel=1e-6)


@pytest.mark.parametrize("n", [1, 3, 25])
def test_exponential_is_log_uniform(n):
    sigmas = np.asarray(exponential(n, 0.01, 10.0))
    _check_shape(sigmas, n)
    if n > 1:
        np.testing.assert_allclose(np.diff(np.log(sigmas[:-1])), -np.log(1000) / (n - 1), rtol=1e-5)


def test_linspace_for_vp_discrete_hits_the_training_timesteps():
    process = VPDiscrete()
    every = np.asarray(make_sigmas("linspace", 1000, process))
    _check_shape(every, 1000)
    np.testing.assert_allclose(every[:-1], process.sigmas[::-1], rtol=2e-6)
    # n = 4 uses timesteps 999, 666, 333, 0.
    some = np.asarray(make_sigmas("linspace", 4, process))
    np.testing.assert_allclose(some[:-1], process.sigmas[[999, 666, 333, 0]], rtol=2e-6)


def test_linspace_for_edm_is_exponential():
    np.testing.assert_allclose(
        make_sigmas("linspace", 12, EDM()), exponential(12, 0.002, 80.0), rtol=2e-6
    )


def test_make_sigmas_defaults_and_overrides():
    process = make_process("ve")
    np.testing.assert_array_equal(make_sigmas("karras", 8, process), karras(8, 0.01, 50.0))
    np.testing.assert_array_equal(
        make_sigmas("karras", 8, process, rho=3.0, sigma_max=20.0), karras(8, 0.01, 20.0, 3.0)
    )


def test_errors():
    process = EDM()
    with pytest.raises(UserError, match="schedule='cosine' is not supported; accepted: karras"):
        make_sigmas("cosine", 10, process)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError, match=f"n={bad!r} must be a positive integer"):
            make_sigmas("karras", bad, process)
    with pytest.raises(UserError, match="n=0"):
        karras(0, 0.1, 1.0)
    with pytest.raises(UserError, match="'linspace' does not take option 'rho'; accepted: none"):
        make_sigmas("linspace", 10, process, rho=7.0)
    with pytest.raises(UserError, match=re.escape("sigma_min=2.0, sigma_max=1.0")):
        exponential(4, 2.0, 1.0)
    with pytest.raises(UserError, match="rho=0"):
        karras(4, 0.1, 1.0, rho=0)


def _check_descending(sigmas, n):
    s = np.asarray(sigmas)
    assert s.shape == (n + 1,)
    assert s[-1] >= 0 and np.all(s[:-1] > 0)
    assert np.all(np.diff(s) < 0), "strictly descending: no duplicated last sigma"


@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("rho", [0.5, 1.0, 3.0])
def test_polyexponential_formula(n, rho):
    sigmas = polyexponential(n, 0.03, 14.6, rho)
    _check_descending(sigmas, n)
    ramp = np.linspace(1.0, 0.0, n) ** rho  # k-diffusion's get_sigmas_polyexponential
    expected = np.exp(ramp * (np.log(14.6) - np.log(0.03)) + np.log(0.03))
    np.testing.assert_allclose(np.asarray(sigmas)[:-1], expected, rtol=1e-6)


def test_polyexponential_with_rho_1_is_exponential():
    np.testing.assert_allclose(polyexponential(17, 0.03, 14.6), exponential(17, 0.03, 14.6), 1e-6)


@pytest.mark.parametrize("n", [1, 9, 30])
def test_logsnr_uniform_is_uniform_in_logsnr_and_equals_exponential(n):
    sigmas = np.asarray(logsnr_uniform(n, 0.002, 80.0))
    _check_descending(sigmas, n)
    logsnr = -2.0 * np.log(sigmas[:-1].astype(np.float64))
    assert logsnr[0] == pytest.approx(-2.0 * np.log(80.0), rel=1e-6)
    if n > 1:
        np.testing.assert_allclose(np.diff(logsnr), 2.0 * np.log(80.0 / 0.002) / (n - 1), 1e-5)
    np.testing.assert_allclose(sigmas, exponential(n, 0.002, 80.0), rtol=1e-6)


@pytest.mark.parametrize(
    ("n", "options"), [(1, {}), (12, {}), (7, {"beta_d": 10.0, "eps_s": 0.01})]
)
def test_vp_uniform_time_formula(n, options):
    sigmas = vp_uniform_time(n, **options)
    _check_descending(sigmas, n)
    beta_d, beta_min, eps_s = options.get("beta_d", 19.9), 0.1, options.get("eps_s", 1e-3)
    t = np.linspace(1.0, eps_s, n)  # k-diffusion's get_sigmas_vp
    expected = np.sqrt(np.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    np.testing.assert_allclose(np.asarray(sigmas)[:-1], expected, rtol=1e-6)


def test_make_sigmas_continuous_schedules():
    process = EDM()
    np.testing.assert_array_equal(
        make_sigmas("polyexponential", 6, process, rho=2.0), polyexponential(6, 0.002, 80.0, 2.0)
    )
    np.testing.assert_array_equal(
        make_sigmas("logsnr_uniform", 6, process), logsnr_uniform(6, 0.002, 80.0)
    )
    # The VP-SDE schedule has its own sigma range: the process's is not used.
    np.testing.assert_array_equal(
        make_sigmas("vp_uniform_time", 6, process, beta_min=0.2), vp_uniform_time(6, beta_min=0.2)
    )


# Where each diffusers scheduler sits: (class, extra settings, convention, final_sigma).
SCHEDULERS = [
    ("DDIMScheduler", {}, "ddim", "zero"),
    ("DDIMScheduler", {"set_alpha_to_one": False}, "ddim", "sigma_min"),
    ("DDPMScheduler", {}, "ddim", "zero"),
    ("PNDMScheduler", {"skip_prk_steps": True}, "ddim", "sigma_min"),
    ("EulerDiscreteScheduler", {}, "euler", "zero"),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}, "euler", "sigma_min"),
    ("EulerAncestralDiscreteScheduler", {}, "euler", "zero"),
    ("HeunDiscreteScheduler", {}, "euler", "zero"),
    ("LMSDiscreteScheduler", {}, "euler", "zero"),
    ("KDPM2DiscreteScheduler", {}, "euler", "zero"),
    ("DPMSolverMultistepScheduler", {}, "dpmsolver", "zero"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}, "dpmsolver", "sigma_min"),
    ("DPMSolverSinglestepScheduler", {}, "dpmsolver", "zero"),
    ("DEISMultistepScheduler", {}, "dpmsolver", "sigma_min"),
    ("UniPCMultistepScheduler", {}, "dpmsolver", "zero"),
]
# DPMSolverSinglestepScheduler has no timestep_spacing setting: it always spaces like "linspace".
DIFFUSERS_CASES = [
    pytest.param(*case, spacing, id=f"{case[0]}-{case[3]}-{spacing}")
    for case in SCHEDULERS
    for spacing in SPACINGS
    if case[0] != "DPMSolverSinglestepScheduler" or spacing == "linspace"
]


def _dedupe(a):
    """Drop consecutive repeats."""
    return a[np.concatenate([[True], np.diff(a) != 0])]


def _diffusers_steps(scheduler):
    """(timesteps [n], sigmas [n + 1]) that a diffusers scheduler steps through after
    `set_timesteps(n)`: the sigma at each of its timesteps, then its final sigma."""
    ts = scheduler.timesteps.numpy()
    if not hasattr(scheduler, "sigmas"):  # DDIM / DDPM / PNDM work with alphas_cumprod.
        ts = _dedupe(ts)  # PLMS repeats one timestep for its warm-up step.
        alphas = np.append(
            scheduler.alphas_cumprod.numpy()[ts],
            float(getattr(scheduler, "final_alpha_cumprod", 1.0)),  # DDPM ends at alpha_bar = 1.
        )
        return ts, np.sqrt((1.0 - alphas) / alphas)
    if scheduler.order == 2:
        # Heun and KDPM2 list each inner sigma twice, with a repeated (Heun) or a midpoint
        # (KDPM2) timestep after each step's own.
        return ts[::2], _dedupe(scheduler.sigmas.numpy())
    return ts, scheduler.sigmas.numpy()


def _assert_sigmas_close(ours, ref):
    """Equal to float32 rounding. Near t = 0 diffusers' float32 `1 - alpha_bar` cancels, which
    costs its sigma an absolute error of about `2^-24 / sigma` (up to 1e-6 at sigma = 0.01)."""
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=3e-6, atol=2e-6)


@pytest.mark.parametrize("n", [10, 25])
@pytest.mark.parametrize(
    ("name", "settings", "convention", "final_sigma", "spacing"), DIFFUSERS_CASES
)
def test_discrete_matches_diffusers(name, settings, convention, final_sigma, spacing, n):
    diffusers = pytest.importorskip("diffusers")
    cls = getattr(diffusers, name)
    if "timestep_spacing" in inspect.signature(cls).parameters:
        # steps_offset=1 (Stable Diffusion's) shifts "leading" only, in diffusers and here.
        settings = settings | {"timestep_spacing": spacing, "steps_offset": 1}
    scheduler = cls(**SD_BETAS, **settings)
    scheduler.set_timesteps(n)
    ref_ts, ref_sigmas = _diffusers_steps(scheduler)
    process = VPDiscrete()
    args = (n, process, spacing, 1, convention)
    if np.any(np.diff(ref_sigmas) >= 0):
        # "sigma_min" after a last timestep of 0: diffusers repeats the last sigma.
        assert final_sigma == "sigma_min" and ref_ts[-1] == 0
        with pytest.raises(UserError, match="repeats the last sigma"):
            discrete(*args, final_sigma)
        return
    np.testing.assert_array_equal(np.asarray(discrete_timesteps(*args)), ref_ts)
    sigmas = discrete(*args, final_sigma)
    _check_descending(sigmas, n)
    _assert_sigmas_close(sigmas, ref_sigmas)


def test_discrete_linear_betas_match_ddpm_defaults():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler()
    scheduler.set_timesteps(50)
    ref_ts, ref_sigmas = _diffusers_steps(scheduler)
    process = VPDiscrete(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    np.testing.assert_array_equal(discrete_timesteps(50, process), ref_ts)
    _assert_sigmas_close(discrete(50, process), ref_sigmas)


@pytest.mark.parametrize(
    ("spacing", "convention", "expected"),
    [
        ("leading", "ddim", [751, 501, 251, 1]),  # arange(4) * 250 + 1
        ("leading", "dpmsolver", [801, 601, 401, 201]),  # arange(5) * 200 + 1, drop the lowest
        ("trailing", "euler", [999, 749, 499, 249]),  # round(arange(1000, 0, -250)) - 1
        ("linspace", "ddim", [999, 666, 333, 0]),
        ("linspace", "dpmsolver", [999, 749, 500, 250]),  # linspace(0, 999, 5).round()
    ],
)
def test_discrete_integer_timesteps(spacing, convention, expected):
    process = VPDiscrete()
    ts = discrete_timesteps(4, process, spacing, steps_offset=1, convention=convention)
    np.testing.assert_array_equal(ts, expected)
    sigmas = discrete(4, process, spacing, steps_offset=1, convention=convention)
    np.testing.assert_allclose(np.asarray(sigmas)[:-1], process.sigmas[expected], rtol=1e-6)


def test_discrete_euler_linspace_interpolates_sigma_linearly_in_timestep():
    process = VPDiscrete()
    ts = np.asarray(discrete_timesteps(25, process, "linspace", convention="euler"))
    assert ts[1] == np.float32(999 - 999 / 24)  # fractional: 957.375
    sigmas = np.asarray(discrete(25, process, "linspace", convention="euler"))
    i, w = np.divmod(ts.astype(np.float64), 1.0)
    i = i.astype(int)
    upper = process.sigmas[np.minimum(i + 1, 999)]
    np.testing.assert_allclose(sigmas[:-1], (1 - w) * process.sigmas[i] + w * upper, rtol=1e-6)
    # More steps than training timesteps stay distinct here, as in diffusers.
    _check_descending(discrete(1500, process, "linspace", convention="euler"), 1500)


def test_make_sigmas_discrete():
    process = VPDiscrete()
    options = {"spacing": "trailing", "convention": "dpmsolver", "final_sigma": "sigma_min"}
    np.testing.assert_array_equal(
        make_sigmas("discrete", 12, process, **options), discrete(12, process, **options)
    )
    np.testing.assert_array_equal(make_sigmas("discrete", 12, process), discrete(12, process))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_karras_reproduces_euler_karras_sigmas(spacing):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EulerDiscreteScheduler(
        **SD_BETAS, use_karras_sigmas=True, timestep_spacing=spacing, steps_offset=1
    )
    scheduler.set_timesteps(25)
    process = VPDiscrete()
    # diffusers takes the karras range from the sigmas of its spaced timesteps: with "linspace"
    # (its default) that is the whole training table, the process's range.
    spaced = np.asarray(discrete(25, process, spacing, steps_offset=1, convention="euler"))
    sigmas = karras(25, float(spaced[-2]), float(spaced[0]))
    if spacing == "linspace":
        np.testing.assert_array_equal(sigmas, karras(25, process.sigma_min, process.sigma_max))
    _assert_sigmas_close(sigmas, scheduler.sigmas.numpy())
    # Its timesteps are the process's log-sigma interpolation, to float32 rounding.
    t = np.asarray(process.sigma_to_t(sigmas[:-1]))
    np.testing.assert_allclose(t, scheduler.timesteps.numpy(), atol=2e-3)


def test_discrete_errors():
    process = VPDiscrete()
    for other in (EDM(), VPCosine()):
        with pytest.raises(UserError, match="need a VPDiscrete process; got"):
            make_sigmas("discrete", 10, other)
    with pytest.raises(UserError, match="spacing='uniform' is not supported; accepted: leading"):
        discrete(10, process, spacing="uniform")
    with pytest.raises(UserError, match="convention='heun' is not supported; accepted: ddim"):
        discrete_timesteps(10, process, convention="heun")
    with pytest.raises(UserError, match="final_sigma='one' is not supported; accepted: zero"):
        discrete(10, process, final_sigma="one")
    for bad in (-1, 1.0, True):
        with pytest.raises(UserError, match=f"steps_offset={bad!r} must be a non-negative"):
            discrete(10, process, steps_offset=bad)
    for bad in (0, -2):
        with pytest.raises(UserError, match=f"n={bad}"):
            discrete_timesteps(bad, process)
    with pytest.raises(UserError, match="'discrete' does not take option 'timestep_spacing'; acc"):
        make_sigmas("discrete", 10, process, timestep_spacing="leading")


@pytest.mark.parametrize(
    ("n", "spacing", "convention"),
    [
        (1001, "leading", "ddim"),  # T // n = 0
        (1001, "trailing", "euler"),
        (1000, "leading", "dpmsolver"),  # n + 1 points
        (1000, "linspace", "dpmsolver"),
    ],
)
def test_discrete_too_many_steps(n, spacing, convention):
    with pytest.raises(UserError, match=f"n={n} repeats timesteps: too many steps"):
        discrete(n, VPDiscrete(), spacing, convention=convention)


def test_discrete_refuses_what_diffusers_gets_wrong():
    process = VPDiscrete()
    # Float rounding in diffusers' trailing grid gives 62 timesteps ending at -1 for n = 61.
    with pytest.raises(UserError, match="n=61 gives 62 timesteps ending at -1"):
        discrete(61, process, "trailing")
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(**SD_BETAS, timestep_spacing="trailing")
    scheduler.set_timesteps(61)
    assert scheduler.timesteps.numpy()[-1] == -1 and len(scheduler.timesteps) == 62
    # "sigma_min" after timestep 0 (here "leading" without offset) repeats the last sigma.
    with pytest.raises(UserError, match="final_sigma='sigma_min' after 'leading' spacing"):
        discrete(10, process, final_sigma="sigma_min")
    with pytest.raises(UserError, match="starts at timestep 1000 > num_train_timesteps - 1"):
        discrete(1, process, steps_offset=1000)


def test_continuous_schedule_errors():
    with pytest.raises(UserError, match="rho=0"):
        polyexponential(4, 0.1, 1.0, rho=0.0)
    with pytest.raises(UserError, match=re.escape("sigma_min=1.0, sigma_max=1.0")):
        logsnr_uniform(4, 1.0, 1.0)
    with pytest.raises(UserError, match=re.escape("eps_s=1.0 must satisfy 0 < eps_s < 1")):
        vp_uniform_time(4, eps_s=1.0)
    with pytest.raises(UserError, match=re.escape("beta_d=-1.0, beta_min=0.1 must be >= 0")):
        vp_uniform_time(4, beta_d=-1.0)
    with pytest.raises(UserError, match="n=0"):
        vp_uniform_time(0)
