"""Measured orders of convergence of the deterministic samplers on a smooth Gaussian mixture.

The error is the RMS distance to the float64 reference solution of the PF-ODE from the same
noise, on grids geometric in sigma from Stable Diffusion's sigma_max down to 0.05 (a last step
into 0 is first order by design in most samplers, so the grids stop above it). The order is the
least-squares slope of -log(error) against log(steps) over 16, 32 and 64 steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.benchmarks.mixtures import as_dtype, make_mixture, reference_solution

SIGMA_MAX, SIGMA_END = 14.6, 0.05
STEPS = (16, 32, 64)
MIXTURE = make_mixture(dim=2, components=4, spread=1.0, component_std=0.5, seed=0)

# (sampler, options, expected order, tolerance): theory +-0.15; third-order methods >= 2.7.
EXACT = [
    ("euler", {}, 1.0),
    ("ddim", {}, 1.0),
    ("heun", {}, 2.0),
    ("dpm_2", {}, 2.0),
    ("dpmpp_2m", {"lower_order_final": False}, 2.0),
    ("dpm_solver", {"order": 2, "lower_order_final": False}, 2.0),
    ("unipc", {"order": 1, "lower_order_final": False}, 2.0),  # UniP-1 + UniC: order 2
]
AT_LEAST_THIRD = [
    ("dpmpp_3m", {"exact_d2": True, "lower_order_final": False}),
    ("deis", {"order": 3, "lower_order_final": False}),
    ("unipc", {"order": 2, "lower_order_final": False}),  # UniP-2 + UniC: order 3
    ("unipc", {"order": 3, "lower_order_final": False}),
    ("lms", {"order": 4}),
    ("ipndm", {"order": 4}),
]


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        x = np.asarray(MIXTURE.sample_noised(jax.random.key(0), 64, SIGMA_MAX, jnp.float64))
    reference, _ = reference_solution(MIXTURE, x, SIGMA_MAX, SIGMA_END, 1e-12, 1e-12)
    return x, reference


def measured_order(name, options, problem) -> tuple[float, list[float]]:
    x, reference = problem
    errors = []
    with jax.enable_x64(True):
        denoise = as_dtype(MIXTURE, jnp.float64).denoise
        for n in STEPS:
            sigmas = jnp.asarray(np.geomspace(SIGMA_MAX, SIGMA_END, n + 1))
            out = samplers.get(name)(denoise, jnp.asarray(x), sigmas, **options)
            errors.append(float(np.sqrt(np.mean((np.asarray(out) - reference) ** 2))))
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0], errors


@pytest.mark.parametrize(("name", "options", "order"), EXACT, ids=lambda v: str(v))
def test_order_matches_theory(name, options, order, problem):
    slope, errors = measured_order(name, options, problem)
    assert slope == pytest.approx(order, abs=0.15), errors


@pytest.mark.parametrize(("name", "options"), AT_LEAST_THIRD, ids=lambda v: str(v))
def test_third_order_methods(name, options, problem):
    slope, errors = measured_order(name, options, problem)
    assert slope >= 2.7, (slope, errors)


def test_diffusers_3m_weighting_is_second_order(problem):
    """DPM-Solver++(3M) as diffusers and k-diffusion weight it (see `dpmpp_3m`)."""
    slope, errors = measured_order("dpmpp_3m", {"lower_order_final": False}, problem)
    assert slope == pytest.approx(2.0, abs=0.3), errors
