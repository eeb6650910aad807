"""Sampling schedules: formulas, a single trailing 0 (no duplicated last sigma), errors."""

import re

import numpy as np
import pytest

from jaxdiff.diffusion import EDM, VPDiscrete, exponential, karras, make_process, make_sigmas
from jaxdiff.errors import UserError


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
    with pytest.raises(UserError, match="unknown sigma schedule 'cosine'; accepted: karras"):
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
