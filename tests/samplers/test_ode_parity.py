"""Euler and Heun against diffusers' EulerDiscreteScheduler and HeunDiscreteScheduler on the exact
denoiser of a Gaussian mixture, in float64, from the same initial noise along the same sigmas.

Only the deterministic samplers are compared: diffusers' Euler churn (`s_churn > 0`) evaluates the
model at the un-churned sample and sigma and then uses it at `sigma_hat`, whereas Karras et al.
2022, Algorithm 2 (and jaxdiff) evaluates the denoiser at the churned sample and `sigma_hat`.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

from jaxdiff import samplers
from jaxdiff.benchmarks.diffusers_reference import SD_SCHEDULE

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import initial_noise, jax_denoiser, run_diffusers, sigma_at

SD = SD_SCHEDULE
TOLERANCE = 1e-5  # max abs error of the final sample (diffusers keeps float32 sigmas)
LEADING = {"steps_offset": 1, "timestep_spacing": "leading"}  # SD's config


@pytest.mark.parametrize(
    ("name", "scheduler_cls", "config", "steps"),
    [
        pytest.param("euler", EulerDiscreteScheduler, LEADING, 10, id="euler"),
        pytest.param("euler", EulerDiscreteScheduler, {}, 10, id="euler-linspace"),
        pytest.param(
            "euler", EulerDiscreteScheduler, {"use_karras_sigmas": True}, 8, id="euler-karras"
        ),
        pytest.param("heun", HeunDiscreteScheduler, LEADING, 10, id="heun"),
        pytest.param(
            "heun",
            HeunDiscreteScheduler,
            {"timestep_spacing": "trailing", "use_karras_sigmas": True},
            8,
            id="heun-karras-trailing",
        ),
    ],
)
def test_matches_diffusers(name, scheduler_cls, config, steps):
    """Same final sample to `TOLERANCE`, and the same number and sigmas of denoiser calls: Heun's
    are `2 n - 1`, its step into 0 being Euler's. The reference samples (it takes the noise to
    the mixture's scale), and a run from 5% more initial noise misses it by > 10x."""
    scheduler = scheduler_cls(**SD, **config)
    scheduler.set_timesteps(steps)
    # Heun repeats every timestep after the first for its second evaluation.
    timesteps = np.asarray(scheduler.timesteps, np.float64)[:: 2 if name == "heun" else 1]
    sigmas = np.asarray([*(sigma_at(scheduler, t) for t in timesteps), 0.0])
    x = initial_noise(8, sigmas[0])
    want, want_calls = run_diffusers(scheduler, x, sigmas[0], 0.0)
    calls = []

    def denoise(x, sigma):
        jax.debug.callback(lambda s: calls.append(float(s)), sigma, ordered=True)
        return jax_denoiser()(x, sigma)

    with jax.enable_x64(True):
        got = samplers.get(name)(denoise, jnp.asarray(x), jnp.asarray(sigmas))
        jax.effects_barrier()
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(calls, want_calls, rtol=1e-5)
    assert len(calls) == samplers.evals_per_step(name) * steps - (name == "heun")
    assert 0.5 < want.std() < 0.2 * x.std(), (want.std(), x.std())  # measured 0.8, >= 7
    with jax.enable_x64(True):
        wrong = samplers.get(name)(jax_denoiser(), jnp.asarray(1.05 * x), jnp.asarray(sigmas))
    assert np.abs(np.asarray(wrong) - want).max() > 10 * TOLERANCE
