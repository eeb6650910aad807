"""Run a diffusers scheduler on the exact denoiser of a Gaussian mixture, wrapped as an
eps-predicting discrete VP model (see `jaxdiff.benchmarks.diffusers_reference`), so that a
jaxdiff sampler and a diffusers scheduler can be compared from the same initial noise along the
same noise levels, in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.benchmarks import diffusers_reference
from jaxdiff.benchmarks.diffusers_reference import scheduler_sigmas, sigma_at
from jaxdiff.benchmarks.mixtures import GaussianMixture, as_dtype, exact_denoise, make_mixture

MIXTURE = make_mixture(dim=3, components=4, spread=1.0, component_std=0.3, seed=0)

__all__ = [
    "MIXTURE",
    "initial_noise",
    "jax_denoiser",
    "run_diffusers",
    "scheduler_sigmas",
    "sigma_at",
]


def jax_denoiser(mixture: GaussianMixture = MIXTURE, dtype=jnp.float64):
    """The exact denoiser for a jaxdiff sampler (create it inside `jax.enable_x64(True)` for
    float64)."""
    return as_dtype(mixture, dtype).denoise


def initial_noise(n: int, sigma: float, seed: int = 0, mixture: GaussianMixture = MIXTURE):
    """Exact samples of the noised mixture at `sigma`, float64 numpy. [n, d]"""
    with jax.enable_x64(True):
        x = mixture.sample_noised(jax.random.key(seed), n, sigma, jnp.float64)
    return np.asarray(x)


def _numpy_denoiser(mixture: GaussianMixture):
    with jax.enable_x64(True):
        mix64 = as_dtype(mixture, jnp.float64)

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        with jax.enable_x64(True):
            return np.asarray(exact_denoise(mix64, jnp.asarray(x), jnp.asarray(sigma)))

    return denoise


def run_diffusers(
    scheduler,
    x: np.ndarray,
    sigma_start: float,
    sigma_end: float,
    step_kwargs: dict | None = None,
    mixture: GaussianMixture = MIXTURE,
) -> tuple[np.ndarray, list[float]]:
    """Run the denoising loop of a scheduler whose `set_timesteps` has been called, from the VE
    sample `x [B, d]` at `sigma_start`. Returns the final VE sample at `sigma_end` and the sigmas
    of the model calls (`diffusers_reference.run_scheduler`)."""
    return diffusers_reference.run_scheduler(
        scheduler, _numpy_denoiser(mixture), x, sigma_start, sigma_end, step_kwargs
    )


def assert_misses(wrong, want: np.ndarray, atol: float) -> None:
    """A deliberately wrong run (e.g. from 5% more initial noise) must miss the reference by at
    least 10x the tolerance its parity check allows: that check can fail."""
    miss = float(np.abs(np.asarray(wrong) - want).max())
    assert miss > 10 * atol, f"a wrong run lands {miss:.2e} from the reference (tolerance {atol})"
