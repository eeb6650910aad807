"""UniPC against diffusers' `UniPCMultistepScheduler` on the exact denoiser of a Gaussian mixture
(see diffusers_reference.py), plus its edge cases: few steps, the step to sigma = 0, bad options,
bf16 input, traced sigmas."""

import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler
from jax.experimental import io_callback

from jaxdiff import samplers
from jaxdiff.errors import UserError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from diffusers_reference import (
    assert_misses,
    initial_noise,
    jax_denoiser,
    run_diffusers,
    scheduler_sigmas,
    sigma_at,
)

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SPACING = {
    "leading": dict(timestep_spacing="leading", steps_offset=1),
    "trailing": dict(timestep_spacing="trailing"),
}


class _FiniteBH1Scheduler(UniPCMultistepScheduler):
    """diffusers' bh1 step to sigma = 0 is NaN: it multiplies B(h) = -h = -inf by the zero
    residual of its first-order update. That update does not depend on B(h), so it is taken
    with bh2's finite B(h) = expm1(-h) = -1."""

    def multistep_uni_p_bh_update(self, *args, **kwargs):
        if self.config.solver_type != "bh1" or self.sigmas[self.step_index + 1] > 0:
            return super().multistep_uni_p_bh_update(*args, **kwargs)
        self.register_to_config(solver_type="bh2")
        try:
            return super().multistep_uni_p_bh_update(*args, **kwargs)
        finally:
            self.register_to_config(solver_type="bh1")


def _scheduler(variant, order, corrector, n, spacing, final, lower_order_final):
    sched = _FiniteBH1Scheduler(
        **SD,
        **SPACING[spacing],
        solver_order=order,
        solver_type=variant,
        lower_order_final=lower_order_final,
        final_sigmas_type=final,
        disable_corrector=[] if corrector else list(range(n)),
    )
    sched.set_timesteps(n)
    return sched


def _unipc64(x, sigmas, calls: list[float] | None = None, **options) -> np.ndarray:
    """jaxdiff's unipc in float64 on the mixture's denoiser, appending the sigma of every
    denoiser call to `calls` when given. (The callback gets the bits of sigma as uint32: it
    may run on a thread outside the `enable_x64` context, which would see float32.)"""
    with jax.enable_x64(True):
        denoise = jax_denoiser()

        def record(bits: np.ndarray) -> None:
            calls.append(float(np.asarray(bits, np.uint32).view(np.float64)[0]))

        def recording(x, sigma):
            io_callback(record, None, jax.lax.bitcast_convert_type(sigma, jnp.uint32), ordered=True)
            return denoise(x, sigma)

        sampler = samplers.get("unipc")
        out = sampler(denoise if calls is None else recording, x, jnp.asarray(sigmas), **options)
        jax.effects_barrier()
        return np.asarray(out)


@pytest.mark.parametrize(
    ("variant", "order", "corrector", "n", "spacing", "final", "lower_order_final"),
    [
        ("bh2", 2, True, 10, "leading", "zero", True),  # diffusers' defaults on SD
        ("bh2", 2, False, 5, "leading", "zero", True),
        ("bh2", 1, True, 5, "leading", "zero", True),
        ("bh2", 3, True, 10, "leading", "zero", True),
        ("bh2", 3, False, 10, "trailing", "zero", True),
        ("bh1", 1, False, 10, "leading", "zero", True),
        ("bh1", 2, True, 5, "leading", "zero", True),
        ("bh1", 3, True, 5, "leading", "zero", True),
        ("bh1", 2, False, 10, "trailing", "zero", True),
        ("bh1", 3, False, 10, "leading", "sigma_min", False),
        ("bh2", 2, True, 5, "leading", "sigma_min", False),
        ("bh2", 3, True, 10, "leading", "sigma_min", True),
    ],
)
def test_matches_diffusers(variant, order, corrector, n, spacing, final, lower_order_final):
    """Same result and model calls as `UniPCMultistepScheduler`: to 1e-5 as shipped (it keeps its
    sigmas in float32), and to 1e-10 with its sigmas replaced by the float64 ones."""
    config = (variant, order, corrector, n, spacing, final, lower_order_final)
    sched = _scheduler(*config)
    sigmas = scheduler_sigmas(sched, sigma_at(sched, 0) if final == "sigma_min" else 0.0)
    x = initial_noise(8, sigmas[0])
    want, want_calls = run_diffusers(sched, x, sigmas[0], sigmas[-1])

    exact = _scheduler(*config)
    exact.sigmas = torch.from_numpy(sigmas)
    want_exact, _ = run_diffusers(exact, x, sigmas[0], sigmas[-1])

    calls: list[float] = []
    got = _unipc64(
        x,
        sigmas,
        calls,
        order=order,
        variant=variant,
        corrector=corrector,
        lower_order_final=lower_order_final,
    )
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got, want_exact, atol=1e-10)
    wrong = _unipc64(
        1.05 * x,
        sigmas,
        order=order,
        variant=variant,
        corrector=corrector,
        lower_order_final=lower_order_final,
    )
    assert_misses(wrong, want, atol=1e-5)
    assert len(calls) == len(want_calls) == n * samplers.evals_per_step("unipc")
    np.testing.assert_allclose(calls, want_calls, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2])
def test_few_steps_match_diffusers(n):
    """Order 3 at 1 and 2 steps: warm-up and lower_order_final leave orders 1 and (1, 1)."""
    sched = _scheduler("bh2", 3, True, n, "leading", "zero", True)
    sigmas = scheduler_sigmas(sched, 0.0)
    sched.sigmas = torch.from_numpy(sigmas)
    x = initial_noise(8, sigmas[0])
    want, _ = run_diffusers(sched, x, sigmas[0], sigmas[-1])
    np.testing.assert_allclose(_unipc64(x, sigmas, order=3), want, atol=1e-10)


def test_step_to_zero_is_first_order():
    """Without lower_order_final the step into sigma = 0 is still first order (diffusers returns
    inf there): order 2 then equals lower_order_final=True, order 3 stays finite."""
    sched = _scheduler("bh2", 2, True, 5, "leading", "zero", True)
    sigmas = scheduler_sigmas(sched, 0.0)
    x = initial_noise(8, sigmas[0])
    low = _unipc64(x, sigmas, order=2)
    np.testing.assert_allclose(_unipc64(x, sigmas, order=2, lower_order_final=False), low)
    assert np.all(np.isfinite(_unipc64(x, sigmas, order=3, lower_order_final=False)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"order": 4}, "order=4 is not supported; accepted: 1, 2, 3"),
        ({"order": 0}, "order=0 is not supported; accepted: 1, 2, 3"),
        ({"variant": "bh3"}, "variant='bh3' is not supported; accepted: bh1, bh2"),
    ],
)
def test_bad_options(options, message):
    sigmas = jnp.array([10.0, 1.0, 0.0])
    with pytest.raises(UserError, match=re.escape(message)):
        samplers.get("unipc")(jax_denoiser(dtype=jnp.float32), jnp.ones((2, 3)), sigmas, **options)


def test_bf16_input_is_finite():
    sigmas = jnp.array([14.6, 5.0, 1.5, 0.4, 0.1, 0.0])
    x = (jax.random.normal(jax.random.key(0), (4, 3)) * 14.6).astype(jnp.bfloat16)
    out = samplers.get("unipc")(jax_denoiser(dtype=jnp.float32), x, sigmas, order=3)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))


def test_jit_with_traced_sigmas():
    sigmas = jnp.array([14.6, 5.0, 1.5, 0.4, 0.1, 0.0])
    x = jax.random.normal(jax.random.key(1), (4, 3)) * 14.6
    sampler = samplers.get("unipc")
    denoise = jax_denoiser(dtype=jnp.float32)
    jitted = jax.jit(lambda x, s: sampler(denoise, x, s, order=3, variant="bh1"))
    np.testing.assert_allclose(
        jitted(x, sigmas), sampler(denoise, x, sigmas, order=3, variant="bh1"), rtol=1e-5
    )
