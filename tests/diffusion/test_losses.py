"""Loss weightings equal the papers' formulas, and the target-space loss equals the x0-space one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import PARAMETERIZATIONS, WEIGHTINGS, Diffusion, make_process
from jaxdiff.diffusion.losses import denoising_loss, target_weight, x0_weight
from jaxdiff.errors import UserError

SIGMA = np.array([0.01, 0.1, 0.3, 1.0, 4.0, 50.0])
GAMMA = 5.0


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_uniform_is_plain_mse_in_each_target_space(x64):
    snr = 1 / SIGMA**2
    # x0-space weights 1 / c_out^2.
    np.testing.assert_allclose(x0_weight("uniform", SIGMA, "eps"), snr)  # Ho et al. eps-MSE
    np.testing.assert_allclose(x0_weight("uniform", SIGMA, "v"), snr + 1)  # v-MSE, VP
    np.testing.assert_allclose(x0_weight("uniform", SIGMA, "x0"), np.ones_like(SIGMA))
    sd = 0.5
    np.testing.assert_allclose(
        x0_weight("uniform", SIGMA, "edm", sd), (SIGMA**2 + sd**2) / (SIGMA * sd) ** 2
    )
    for p in PARAMETERIZATIONS:
        np.testing.assert_allclose(target_weight("uniform", SIGMA, p, sd), np.ones_like(SIGMA))


def test_min_snr_matches_hang_et_al(x64):
    snr = 1 / SIGMA**2
    clipped = np.minimum(snr, GAMMA)
    for p in PARAMETERIZATIONS:
        np.testing.assert_allclose(x0_weight("min_snr", SIGMA, p, 1.0, GAMMA), clipped)
    # Hang et al. 2023, Section 3.4: on the eps loss min(SNR, gamma) / SNR ...
    np.testing.assert_allclose(target_weight("min_snr", SIGMA, "eps", 1.0, GAMMA), clipped / snr)
    # ... and on the v loss min(SNR, gamma) / (SNR + 1).
    np.testing.assert_allclose(
        target_weight("min_snr", SIGMA, "v", 1.0, GAMMA), clipped / (snr + 1)
    )
    np.testing.assert_allclose(target_weight("min_snr", SIGMA, "x0", 1.0, GAMMA), clipped)


def test_edm_weighting_matches_karras_et_al(x64):
    sd = 0.5
    lam = (SIGMA**2 + sd**2) / (SIGMA * sd) ** 2
    for p in PARAMETERIZATIONS:
        np.testing.assert_allclose(x0_weight("edm", SIGMA, p, sd), lam)
    # lambda * c_out^2 = 1 on the EDM target (Karras et al. 2022, eq. 8 and Table 1).
    np.testing.assert_allclose(target_weight("edm", SIGMA, "edm", sd), np.ones_like(SIGMA))
    np.testing.assert_allclose(target_weight("edm", SIGMA, "eps", sd), lam * SIGMA**2)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("process", ["edm", "vp_discrete", "rectified_flow"])
def test_target_space_loss_equals_weighted_x0_loss(parameterization, weighting, process, x64):
    """loss = lambda(sigma) * mean((D(x, sigma) - x0)^2) for any network."""
    diffusion = Diffusion(make_process(process), parameterization, weighting, GAMMA)
    k0, k1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k0, (6, 5), jnp.float64)
    noise = jax.random.normal(k1, (6, 5), jnp.float64)
    sigma = jnp.array([0.05, 0.2, 0.7, 1.5, 6.0, 12.0])

    def net(x_in, t):
        return jnp.tanh(x_in) + 0.01 * t[:, None]

    x = x0 + sigma[:, None] * noise
    err = jnp.mean((diffusion.denoiser(net)(x, sigma) - x0) ** 2, axis=1)
    lam = x0_weight(weighting, sigma, parameterization, diffusion.process.sigma_data, GAMMA)
    np.testing.assert_allclose(diffusion.loss_at(net, x0, noise, sigma), lam * err, rtol=1e-9)


def test_denoising_loss_is_per_example_float32():
    pred = jnp.ones((3, 4, 4, 2), jnp.bfloat16)
    loss = denoising_loss(pred, jnp.zeros((3, 4, 4, 2)), jnp.array([1.0, 2.0, 0.5]))
    assert loss.shape == (3,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, [1.0, 2.0, 0.5])


def test_unknown_weighting():
    with pytest.raises(
        UserError, match="weighting='p2' is not supported; accepted: uniform, min_snr"
    ):
        x0_weight("p2", SIGMA, "eps")
