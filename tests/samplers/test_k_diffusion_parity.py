"""The samplers that carry k-diffusion's names, at their defaults, against k-diffusion 0.1.1's own
`sample_<name>` at its defaults (`k_diffusion_reference`): the exact denoiser of a Gaussian
mixture in float64, the same initial noise and, for the stochastic samplers, the same noise over
each interval (k-diffusion's `noise_sampler` hands it jaxdiff's "independent" noise for the key).

Two grids of 7 Karras steps: k-diffusion's `get_sigmas_karras`, ending in 0, and one ending at
sigma_min > 0, where lowering the order of the last steps (diffusers' `lower_order_final`) would
show. Each jaxdiff sampler is compiled once for both grids and every key.
"""

import functools
import pathlib
import sys
from collections.abc import Callable

import jax
import numpy as np
import pytest
import torch

from jaxdiff import samplers
from jaxdiff.diffusion import karras

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import MIXTURE, initial_noise, jax_denoiser
from k_diffusion_reference import float64, noise_sampler, sampling, torch_denoiser

# The registered samplers with a `sample_<name>` in k-diffusion 0.1.1 that run along a grid;
# `dpm_adaptive`, the other one, takes only sigma_min and sigma_max.
K_DIFFUSION_NAMES = (
    "dpm_2",
    "dpm_2_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2s_ancestral",
    "dpmpp_3m_sde",
    "dpmpp_sde",
    "euler",
    "euler_ancestral",
    "heun",
    "lms",
)
STEPS, SIGMA_MIN, SIGMA_MAX = 7, 0.03, 20.0
RTOL = 1e-10  # of the largest |x|; both agree to ~1e-15
KEY, OTHER_KEY = jax.random.key(7), jax.random.key(8)
X = initial_noise(4, SIGMA_MAX)  # [4, 3]


def grids() -> dict[str, np.ndarray]:
    """`[STEPS + 1]` float64 Karras sigmas ending in 0 (k-diffusion's) and at SIGMA_MIN."""
    with float64():
        to_zero = sampling().get_sigmas_karras(STEPS, SIGMA_MIN, SIGMA_MAX).numpy()
        to_sigma_min = sampling().get_sigmas_karras(STEPS + 1, SIGMA_MIN, SIGMA_MAX).numpy()[:-1]
    return {"to-zero": to_zero, "to-sigma-min": to_sigma_min}


@functools.cache
def compiled(name: str, options: tuple = ()) -> Callable[[np.ndarray, jax.Array], jax.Array]:
    """`run(sigmas, key) -> x` for the jaxdiff sampler `name` from X, compiled once."""
    sampler = samplers.get(name)
    with float64():
        denoise = jax_denoiser()
    return jax.jit(lambda sigmas, key: sampler(denoise, X, sigmas, key, **dict(options)))


def run_jaxdiff(name: str, sigmas: np.ndarray, key: jax.Array = KEY, **options) -> np.ndarray:
    with float64():
        return np.asarray(compiled(name, tuple(sorted(options.items())))(sigmas, key))


def run_k_diffusion(name: str, sigmas: np.ndarray, key: jax.Array = KEY) -> np.ndarray:
    """k-diffusion's `sample_<name>` at its defaults, fed jaxdiff's noise for `key`."""
    stochastic = samplers.is_stochastic(name, {})
    extra = {"noise_sampler": noise_sampler(key, X.shape)} if stochastic else {}
    with float64():
        sample = getattr(sampling(), f"sample_{name}")
        x, sigmas = torch.from_numpy(X.copy()), torch.from_numpy(sigmas)
        return sample(torch_denoiser(MIXTURE), x, sigmas, disable=True, **extra).numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_every_sampler_with_a_k_diffusion_name_is_compared():
    module = sampling()
    named = {name for name in samplers.names() if hasattr(module, f"sample_{name}")}
    assert named == {*K_DIFFUSION_NAMES, "dpm_adaptive"}


def test_karras_sigmas_are_k_diffusions():
    """jaxdiff's `karras` is k-diffusion's `get_sigmas_karras` rounded to float32."""
    got = np.asarray(karras(STEPS, SIGMA_MIN, SIGMA_MAX))
    np.testing.assert_allclose(got, grids()["to-zero"].astype(np.float32), rtol=0, atol=0)


@pytest.mark.parametrize("name", K_DIFFUSION_NAMES)
def test_matches_k_diffusion(name):
    for grid, sigmas in grids().items():
        want = run_k_diffusion(name, sigmas)
        error = relative_error(run_jaxdiff(name, sigmas), want)
        assert error < RTOL, (grid, error)
        if samplers.is_stochastic(name, {}):
            # The noise matters: another key's run is far off.
            assert relative_error(run_jaxdiff(name, sigmas, OTHER_KEY), want) > 1e3 * RTOL, grid


def test_dpm_adaptive_matches_k_diffusion():
    """`sample_dpm_adaptive(model, x, sigma_min, sigma_max)` is jaxdiff's run along
    `[sigma_max, sigma_min]`."""
    with float64():
        x = torch.from_numpy(X.copy())
        want = sampling().sample_dpm_adaptive(
            torch_denoiser(MIXTURE), x, SIGMA_MIN, SIGMA_MAX, disable=True
        )
    got = run_jaxdiff("dpm_adaptive", np.array([SIGMA_MAX, SIGMA_MIN]))
    assert relative_error(got, want.numpy()) < RTOL


@pytest.mark.parametrize(
    ("name", "grid", "options"),
    [
        ("dpmpp_3m_sde", "to-zero", {"solver_type": "midpoint", "lower_order_final": True}),
        ("dpmpp_2m", "to-sigma-min", {"lower_order_final": True}),
    ],
)
def test_diffusers_settings_miss_k_diffusion(name, grid, options):
    """diffusers' defaults, options of these samplers, land far from k-diffusion's results: the
    comparison above tells them apart."""
    sigmas = grids()[grid]
    want = run_k_diffusion(name, sigmas)
    assert relative_error(run_jaxdiff(name, sigmas, **options), want) > 1e3 * RTOL
