"""`reimpose_known` + `blend_known` (jaxdiff/samplers/inpainting.py) against diffusers'
inpainting loop for a standard UNet (`StableDiffusionInpaintPipeline`, 4 channels): step, then
replace the known region by `known + sigma_next * noise` (by `known` after the last step), the
first step being taken from the unmodified start.

The reference loop is written out here in float64 with the samplers' own update formulas
(k-diffusion's Euler, Heun, LMS and DPM-Solver++(2M) with diffusers' `lower_order_final`);
`test_reference_steps_match_the_samplers` checks those against the jaxdiff samplers without
inpainting. The denoiser is the exact denoiser of a Gaussian mixture, which mixes coordinates (its
responsibilities depend on all of them), so the known region of the network input matters.

What is guaranteed: the generated region equals the reference for any start; the known region of
the result is `known` exactly; the network sees the state's known region only at noise levels
`>= sigma_start` (the first step of a run), so a run whose every level is below `sigma_start`
does not depend on what the start holds there, while a run that starts at `sigma_start` does (as
diffusers' first model call sees the start as it is).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.benchmarks.mixtures import as_dtype, make_mixture
from jaxdiff.pipelines.scheduler_config import SchedulerConfig
from jaxdiff.samplers.inpainting import blend_known, reimpose_known

MIXTURE = make_mixture(dim=6, components=4, spread=1.0, component_std=0.3, seed=1)
SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
}
SAMPLERS = ("euler", "heun", "lms", "dpmpp_2m")
STEPS = 8
BATCH = 5


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def denoiser():
    return as_dtype(MIXTURE, jnp.float64).denoise


def numpy_denoise(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(denoiser()(jnp.asarray(x), jnp.asarray(sigma, jnp.float64)))


def problem(seed: int = 0):
    """(known [B, d], mask [B, d] with 1 where generated and both values in every row, unit
    noise [B, d])."""
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        known, _ = MIXTURE.sample(jax.random.key(seed), BATCH, jnp.float64)
    mask = (rng.random((BATCH, MIXTURE.dim)) < 0.5).astype(np.float64)
    mask[:, 0], mask[:, 1] = 1.0, 0.0
    return np.asarray(known), mask, rng.standard_normal((BATCH, MIXTURE.dim))


def grid(sampler: str) -> np.ndarray:
    """The SD 1.5 grid of `sampler`, float64. [STEPS + 1]"""
    return np.asarray(SchedulerConfig.from_dict(SD15).grid(sampler, STEPS).sigmas, np.float64)


def lms_weight(sigmas: np.ndarray, i: int, j: int, order: int) -> float:
    """k-diffusion's `linear_multistep_coeff`: the integral over the step i of the Lagrange basis
    polynomial of `sigmas[i - j]` over `sigmas[i], ..., sigmas[i - order + 1]`."""
    basis = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            basis *= np.polynomial.Polynomial([-sigmas[i - k], 1.0]) / (
                sigmas[i - j] - sigmas[i - k]
            )
    integral = basis.integ()
    return float(integral(sigmas[i + 1]) - integral(sigmas[i]))


def reference(sampler, x, sigmas, denoise, replace=None):
    """Run `sampler` step by step in float64; `replace(i, x)` is applied after step i."""
    n = sigmas.shape[0] - 1
    derivatives, old_denoised, old_h = [], None, None
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        d = (x - denoised) / sigma
        if sampler == "euler":
            x = x + (sigma_next - sigma) * d
        elif sampler == "heun":
            x_euler = x + (sigma_next - sigma) * d
            if sigma_next == 0:
                x = x_euler
            else:
                # diffusers' pipeline also replaces after Heun's first-order half step.
                x_mid = replace(i, x_euler) if replace else x_euler
                d_next = (x_mid - denoise(x_mid, sigma_next)) / sigma_next
                x = x + 0.5 * (d + d_next) * (sigma_next - sigma)
        elif sampler == "lms":
            derivatives.append(d)
            order = min(i + 1, 4)
            recent = derivatives[::-1][:order]  # newest first
            x = x + sum(lms_weight(sigmas, i, j, order) * recent[j] for j in range(order))
        elif sampler == "dpmpp_2m":
            if sigma_next == 0:
                x = denoised
            else:
                h = np.log(sigma / sigma_next)
                first_order = old_denoised is None or (i == n - 1 and n < 15)
                if first_order:
                    combined = denoised
                else:
                    r = old_h / h
                    combined = (1 + 1 / (2 * r)) * denoised - old_denoised / (2 * r)
                x = np.exp(-h) * x - np.expm1(-h) * combined
                old_h = h
            old_denoised = denoised
        if replace is not None:
            x = replace(i, x)
    return x


def diffusers_inpaint(sampler, start, sigmas, known, mask, noise):
    """diffusers' loop: step, then the known region noised to the next level (to 0 after the
    last step)."""
    n = sigmas.shape[0] - 1

    def replace(i, x):
        level = known + sigmas[i + 1] * noise if i < n - 1 else known
        return mask * x + (1.0 - mask) * level

    return reference(sampler, start, sigmas, numpy_denoise, replace)


def jaxdiff_inpaint(sampler, start, sigmas, known, mask, noise, sigma_start=None):
    sigma_start = sigmas[0] if sigma_start is None else sigma_start
    known, mask, noise = jnp.asarray(known), jnp.asarray(mask), jnp.asarray(noise)
    denoise = reimpose_known(denoiser(), known, mask, noise, jnp.asarray(sigma_start))
    x = samplers.get(sampler)(denoise, jnp.asarray(start), jnp.asarray(sigmas))
    return np.asarray(blend_known(x, known, mask))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_reference_steps_match_the_samplers(sampler):
    """The reference loop without inpainting is the jaxdiff sampler."""
    sigmas = grid(sampler)
    _, _, noise = problem()
    x = noise * sigmas[0]
    got = samplers.get(sampler)(denoiser(), jnp.asarray(x), jnp.asarray(sigmas))
    np.testing.assert_allclose(
        np.asarray(got), reference(sampler, x, sigmas, numpy_denoise), atol=1e-9
    )


def starts(sigmas, known, mask, noise):
    """Pure noise (strength 1: unit noise times the VP start std), the noised known latent
    (strength < 1), and pure noise with something else in the known region."""
    return {
        "noise": noise * np.sqrt(1.0 + sigmas[0] ** 2),
        "noised-known": known + sigmas[0] * noise,
        "other-known-region": mask * noise * sigmas[0] + (1.0 - mask) * 3.0,
    }


@pytest.mark.parametrize("start_name", ["noise", "noised-known", "other-known-region"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_matches_diffusers_replacement_loop(sampler, start_name):
    """The whole grid, and its last 5 steps (a run from an image at strength 5/8)."""
    known, mask, noise = problem()
    for sigmas in (grid(sampler), grid(sampler)[-6:]):
        start = starts(sigmas, known, mask, noise)[start_name]
        got = jaxdiff_inpaint(sampler, start, sigmas, known, mask, noise)
        want = diffusers_inpaint(sampler, start, sigmas, known, mask, noise)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(got[mask == 0], known[mask == 0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_known_region_of_the_start_is_seen_only_at_sigma_start(sampler):
    """Two starts that differ only in the known region: the results differ when the run starts
    at `sigma_start` (the first network input is the start itself), and are identical when every
    level of the run is below `sigma_start`. The last 3 steps, where the denoiser is sensitive."""
    known, mask, noise = problem()
    sigmas = grid(sampler)[-4:]
    first = known + sigmas[0] * noise
    second = mask * first + (1.0 - mask) * (first + 10.0)
    at_start = [jaxdiff_inpaint(sampler, s, sigmas, known, mask, noise) for s in (first, second)]
    assert np.abs(at_start[0] - at_start[1]).max() > 1e-3
    below = [
        jaxdiff_inpaint(sampler, s, sigmas, known, mask, noise, sigma_start=2.0 * sigmas[0])
        for s in (first, second)
    ]
    np.testing.assert_array_equal(below[0], below[1])


def test_blend_known():
    x = jnp.asarray([[1.0, 2.0, 3.0]])
    known = jnp.asarray([[-1.0, -2.0, -3.0]])
    mask = jnp.asarray([[1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(blend_known(x, known, mask)), [[1.0, -2.0, 3.0]])
