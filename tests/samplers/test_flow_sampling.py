"""Flow sampling through the denoiser contract: diffusers' flow grids to the bit, jaxdiff's
samplers equal to diffusers' flow schedulers on the exact mixture in float64 (from t = 1 where
diffusers starts there), and every sampler that starts at sigma = inf shown to take the limit of
its own first step."""

import pathlib
import sys

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.benchmarks import runs
from jaxdiff.benchmarks.diffusers_reference import run_flow_scheduler
from jaxdiff.diffusion import EDM, Diffusion, RectifiedFlow, make_sigmas
from jaxdiff.diffusion.flow_schedules import (
    flow_match_times,
    flow_solver_times,
    times_to_sigmas,
)
from jaxdiff.errors import UserError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import MIXTURE, _numpy_denoiser, assert_misses, jax_denoiser

FLOW = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
SPACINGS = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential"}
SPACINGS |= {"use_beta_sigmas": "beta"}


def _match_options(config: dict, set_kwargs: dict) -> dict:
    """`flow_match_times` options for a `FlowMatchEulerDiscreteScheduler` config."""
    spacing = next((v for k, v in SPACINGS.items() if config.get(k)), "linear")
    keep = ("shift", "time_shift_type", "shift_terminal")
    return {k: config[k] for k in keep if k in config} | set_kwargs | {"spacing": spacing}


EULER_CONFIGS = [
    ({}, {}),
    ({"shift": 3.0}, {}),
    ({"shift": 1.7}, {}),
    ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.3}),
    ({"shift": 3.0, "shift_terminal": 0.1}, {}),
    ({"shift": 3.0, "use_karras_sigmas": True}, {}),
    ({"shift": 3.0, "use_exponential_sigmas": True}, {}),
    ({"shift": 2.0, "use_beta_sigmas": True}, {}),
]


@pytest.mark.parametrize("steps", [2, 7, 28])
@pytest.mark.parametrize(("config", "set_kwargs"), EULER_CONFIGS, ids=str)
def test_flow_match_grid_is_diffusers_to_the_bit(config, set_kwargs, steps):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(steps, **set_kwargs)
    want = scheduler.sigmas.numpy()
    got = flow_match_times(steps, **_match_options(config, set_kwargs))
    np.testing.assert_array_equal(got, want[:-1])
    assert want[-1] == 0 and got[0] == 1.0  # t = 1: sampling starts at sigma = inf
    options = _match_options(config, set_kwargs)
    moved = options | (
        {"mu": 1.01 * options["mu"]}
        if "mu" in options
        else {"shift": 1.01 * config.get("shift", 1)}
    )
    if not (steps == 2 and "shift_terminal" in config):  # [1, shift_terminal] whatever the shift
        assert not np.array_equal(flow_match_times(steps, **moved), want[:-1])


@pytest.mark.parametrize("steps", [1, 2, 9, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 1.7])
def test_solver_and_heun_flow_grids_are_diffusers_to_the_bit(shift, steps):
    heun = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    heun.set_timesteps(steps)
    np.testing.assert_array_equal(flow_match_times(steps, shift=shift), heun.sigmas.numpy()[::2])
    for cls, convention in [
        (diffusers.DPMSolverMultistepScheduler, "dpmsolver"),
        (diffusers.UniPCMultistepScheduler, "unipc"),
    ]:
        scheduler = cls(**FLOW, flow_shift=shift)
        scheduler.set_timesteps(steps)
        got = flow_solver_times(steps, shift=shift, convention=convention)
        np.testing.assert_array_equal(got, scheduler.sigmas.numpy()[:-1])


def test_unipc_dynamic_shift_and_terminal_and_dpm_mu_grids():
    unipc = diffusers.UniPCMultistepScheduler(
        **FLOW, use_dynamic_shifting=True, shift_terminal=0.05
    )
    unipc.set_timesteps(12, mu=0.9)
    got = flow_solver_times(12, mu=0.9, shift_terminal=0.05, convention="unipc")
    np.testing.assert_array_equal(got, unipc.sigmas.numpy()[:-1])
    dpm = diffusers.DPMSolverMultistepScheduler(**FLOW, use_dynamic_shifting=True)
    dpm.set_timesteps(12, mu=0.9)
    np.testing.assert_array_equal(flow_solver_times(12, mu=0.9), dpm.sigmas.numpy()[:-1])


def _to_data(x: np.ndarray) -> float:
    """Mean distance from the points `x [B, d]` to the nearest mixture mean."""
    means = np.asarray(MIXTURE.means, np.float64)  # [K, d]
    return float(np.linalg.norm(x[:, None] - means[None], axis=-1).min(axis=1).mean())


TOLERANCE = 1e-5  # diffusers' flow-match schedulers round the sample to float32 every step


@pytest.mark.parametrize(
    ("name", "options", "scheduler", "set_kwargs", "steps"),
    [
        pytest.param(
            "euler",
            {},
            diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            {},
            8,
            id="euler-flowmatch-shift3",
        ),
        pytest.param(
            "euler",
            {},
            diffusers.FlowMatchEulerDiscreteScheduler(
                use_dynamic_shifting=True, use_karras_sigmas=True
            ),
            {"mu": 0.8},
            6,
            id="euler-flowmatch-mu-karras",
        ),
        pytest.param(
            "flow_heun",
            {},
            diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0),
            {},
            6,
            id="flow_heun-flowmatch-heun",
        ),
        pytest.param(
            "dpmpp_2m",
            {"lower_order_final": True},
            diffusers.DPMSolverMultistepScheduler(**FLOW, flow_shift=3.0),
            {},
            8,
            id="dpmpp_2m-dpmsolver-flow",
        ),
        pytest.param(
            "unipc",
            {},
            diffusers.UniPCMultistepScheduler(**FLOW, flow_shift=3.0),
            {},
            8,
            id="unipc-flow",
        ),
    ],
)
def test_samplers_equal_diffusers_flow_schedulers(name, options, scheduler, set_kwargs, steps):
    """The same sample from the same initial noise `x_t` on the exact mixture's velocity, with
    the model evaluated at the same flow times; a run from 5% more noise misses by > 10x."""
    scheduler.set_timesteps(steps, **set_kwargs)
    times = scheduler.sigmas.numpy()[:-1]
    times = times[:: 2 if name == "flow_heun" else 1]
    sigmas = times_to_sigmas(times)
    with jax.enable_x64(True):
        noise = np.asarray(jax.random.normal(jax.random.key(3), (16, MIXTURE.dim), jnp.float64))
    want, want_times = run_flow_scheduler(scheduler, _numpy_denoiser(MIXTURE), noise)
    start = noise if np.isinf(sigmas[0]) else noise * (1 + sigmas[0])  # x = x_t / (1 - t)
    sampler = samplers.get(name)
    with jax.enable_x64(True):
        got = sampler(jax_denoiser(), jnp.asarray(start), jnp.asarray(sigmas), **options)
        wrong = sampler(jax_denoiser(), jnp.asarray(1.05 * start), jnp.asarray(sigmas), **options)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOLERANCE)
    assert len(want_times) == samplers.evals_per_step(name) * steps - (name == "flow_heun")
    assert np.isinf(sigmas[0]) == name.endswith(("euler", "heun"))  # FlowMatch starts at t = 1
    assert _to_data(want) < 0.6 * _to_data(noise)  # the run reached the data
    assert_misses(wrong, want, TOLERANCE)


# How a run from sigma_0 = S tends to the run from sigma = inf: the scales S it is measured at,
# the factor by which the error must fall from each to the next, and the bound at the largest.
# Euler-type steps converge like 1 / S; a midpoint at sqrt(S sigma_1) like 1 / sqrt(S); the steps
# after the first of the exponential integrators and of DEIS like 1 / log S, since their weights
# hold `h_1 = log(S / sigma_1)`. In float64 the steps in sigma lose D to rounding next to
# x = S eps beyond S ~ 1e8.
RATES = {
    "1/S": ((1e2, 1e4, 1e6), 10, 1e-5),
    "1/sqrt(S)": ((1e2, 1e6, 1e10), 10, 1e-5),
    "1/log(S)": ((1e2, 1e8, 1e32), 3, 5e-3),
    "1/log(S) in sigma": ((1e2, 1e4, 1e8), 2, 2e-3),
}
# Every sampler that takes sigmas[0] = inf, with options that make it deterministic or give it
# its noise from keys that do not depend on sigmas[0] (s_noise = 0 keeps the noise-free part),
# and the options that change its limit.
LIMIT_CASES = [
    ("euler", {}, "1/S"),
    ("euler", {"s_churn": 2.0}, "1/S"),  # per-step keys: the same noise from any start
    ("flow_heun", {}, "1/S"),
    ("ddim", {}, "1/S"),
    ("ddpm", {"s_noise": 0.0}, "1/S"),
    ("euler_ancestral", {"s_noise": 0.0}, "1/S"),
    ("lms", {}, "1/S"),
    ("ipndm", {}, "1/S"),
    ("deis", {}, "1/log(S) in sigma"),
    ("dpmpp_2m", {}, "1/log(S)"),
    ("dpmpp_3m", {}, "1/log(S)"),
    ("dpmpp_2m_sde", {"s_noise": 0.0}, "1/log(S)"),
    ("dpmpp_3m_sde", {"s_noise": 0.0}, "1/log(S)"),
    ("unipc", {}, "1/log(S)"),
    ("unipc", {"order": 3}, "1/log(S)"),  # the rho system without the node at inf
    ("unipc", {"variant": "bh1", "corrector": False}, "1/log(S)"),
    ("dpm_solver", {}, "1/log(S)"),
    ("dpm_solver", {"order": 3, "solver_type": "heun"}, "1/log(S)"),  # expanded in 1 / h
    ("dpmpp_2s_ancestral", {"s_noise": 0.0}, "1/S"),  # eta = 1: the midpoint at sigma_1
    ("dpmpp_2s_ancestral", {"eta": 0.5, "s_noise": 0.0}, "1/sqrt(S)"),  # the midpoint at inf
    ("dpmpp_2s_ancestral", {"eta": 1.5, "s_noise": 0.0}, "1/S"),  # no midpoint
    ("dpmpp_sde", {"s_noise": 0.0}, "1/S"),
    ("dpmpp_sde", {"eta": 0.0}, "1/sqrt(S)"),
]
# The samplers, and options, that refuse sigma = inf (`jaxdiff.samplers.base`), each shown to
# have no limit there: the runs from S = 1e4 and 1e8 differ by at least this much.
NO_LIMIT = {
    ("heun", ()): 1e2,
    ("plms", ()): 1e2,
    ("pndm", ()): 1e2,
    ("dpm_2_ancestral", (("s_noise", 0.0),)): 1e2,
    ("unipc", (("variant", "bh1"),)): 0.1,
}
# dpm_2 tends to a limit that needs D's derivative at t = 1, and dpm_adaptive's finite steps in
# lambda cannot start at lambda = -inf; neither is run here.
REFUSED = {("dpm_2", ()), ("dpm_adaptive", ())} | set(NO_LIMIT)


def _flow_run(name: str, options: dict, sigma0: float, x: jax.Array) -> np.ndarray:
    """The sampler on the exact mixture from `sigma0` down a 6-step shifted flow grid."""
    tail = times_to_sigmas(flow_match_times(6, shift=3.0))[1:]
    sigmas = jnp.asarray(np.append(sigma0, tail))
    return np.asarray(samplers.get(name)(jax_denoiser(), x, sigmas, jax.random.key(5), **options))


def test_the_samplers_with_limit_cases_are_exactly_those_that_start_at_infinity():
    starting = {n for n in samplers.names() if samplers.starts_at_infinity(n)}
    assert starting == {name for name, _, _ in LIMIT_CASES}
    assert starting.isdisjoint(name for name, _ in REFUSED - {("unipc", (("variant", "bh1"),))})
    assert starting | {name for name, _ in REFUSED} == set(samplers.names())


@pytest.mark.parametrize(("name", "options", "rate"), LIMIT_CASES, ids=lambda v: str(v))
def test_a_run_from_sigma_inf_is_the_limit_of_runs_from_large_sigma(name, options, rate):
    """From `sigma_0 = S` with `x = S eps` the result tends to the run from sigma = inf with the
    state `eps` as S grows, at the rate of `RATES`. A run whose first step used the finite-sigma
    formula at inf would be NaN, and one that took another limit would stay O(1e-3) or more
    away (measured: 5e-3 for DPM-Solver++(2S) with its midpoint at inf where it tends to
    sigma_1)."""
    scales, factor, bound = RATES[rate]
    with jax.enable_x64(True):
        eps = jax.random.normal(jax.random.key(4), (16, MIXTURE.dim), jnp.float64)
        limit = _flow_run(name, options, np.inf, eps)
        errors = [np.abs(_flow_run(name, options, s, s * eps) - limit).max() for s in scales]
    assert np.all(np.isfinite(limit)) and np.abs(limit - np.asarray(eps)).max() > 0.5
    assert errors[2] < bound and errors[0] > factor * errors[1] > factor**2 * errors[2], errors


@pytest.mark.parametrize(("name", "options"), sorted(NO_LIMIT), ids=lambda v: str(v))
def test_the_refused_samplers_have_no_limit_at_sigma_inf(name, options):
    with jax.enable_x64(True):
        eps = jax.random.normal(jax.random.key(4), (16, MIXTURE.dim), jnp.float64)
        near, far = (_flow_run(name, dict(options), s, s * eps) for s in (1e4, 1e8))
    assert not np.abs(near - far).max() < NO_LIMIT[name, options]


@pytest.mark.parametrize(
    ("name", "options", "why"),
    [(name, {}, "") for name in sorted({n for n, _ in REFUSED} - {"unipc"})]
    + [("unipc", {"variant": "bh1"}, " with variant='bh1' and corrector=True")],
    ids=lambda v: str(v),
)
def test_samplers_without_a_limit_refuse_sigma_inf(name, options, why):
    sigmas = jnp.asarray([np.inf, 2.0, 0.0])
    message = rf"sampler '{name}'{why} has no finite step from sigma = inf"
    with pytest.raises(UserError, match=message):
        samplers.get(name)(jax_denoiser(dtype=jnp.float32), jnp.ones((2, 3)), sigmas, **options)


def test_infinite_start_errors():
    sigmas = jnp.asarray([np.inf, 2.0, 0.0])
    with pytest.raises(UserError, match="noise='brownian' lives on"):
        samplers.get("ddpm")(
            jax_denoiser(dtype=jnp.float32),
            jnp.ones((2, 3)),
            sigmas,
            jax.random.key(0),
            noise="brownian",
        )
    with pytest.raises(UserError, match="sigmas must be finite"):
        samplers.get("euler")(jax_denoiser(dtype=jnp.float32), jnp.ones((2, 3)), sigmas[::-1])
    with pytest.raises(UserError, match="EDM with parameterization 'edm' has no finite limit"):
        Diffusion(EDM(), "edm").denoiser(lambda x, t: x)(jnp.ones((2, 3)), jnp.inf)
    with pytest.raises(UserError, match=r"'flow_match' starts at sigma = inf .* a EDM process"):
        make_sigmas("flow_match", 4, EDM())
    with pytest.raises(UserError, match="parameterization 'eps' has no finite limit"):
        Diffusion(RectifiedFlow(), "eps").sampling_sigmas(4, "flow_match")
    flow_grid = times_to_sigmas(flow_match_times(4))
    with pytest.raises(UserError, match="sampler 'heun' has no finite step from sigma = inf"):
        runs.calls("heun", {}, flow_grid)  # checked before the benchmark's compiled run
    with pytest.raises(UserError, match="noise='brownian' lives on"):
        runs.calls("ddpm", {"noise": "brownian"}, flow_grid)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: flow_match_times(0), "n=0 must be a positive integer"),
        (lambda: flow_match_times(4, shift=0.0), "shift=0.0 must be > 0"),
        (lambda: flow_match_times(4, shift_terminal=1.0), r"shift_terminal=1.0 must be in"),
        (lambda: flow_match_times(1, shift_terminal=0.1), "needs a grid ending below t = 1"),
        (lambda: flow_match_times(4, spacing="cosine"), "spacing"),
        (lambda: flow_match_times(4, mu=1.0, time_shift_type="cubic"), "time_shift_type"),
        (lambda: flow_solver_times(4, shift_terminal=0.1), "has none"),
        (lambda: flow_solver_times(4, convention="deis"), "convention"),
        (lambda: flow_match_times(4, num_train_timesteps=1), "num_train_timesteps=1"),
        (lambda: times_to_sigmas(np.array([1.2, 0.5])), r"in \(0, 1\]"),
    ],
)
def test_flow_grid_errors(call, message):
    with pytest.raises(UserError, match=message):
        call()
