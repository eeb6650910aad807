"""Processes: diffusers-equal VP tables, sigma <-> t round trips, training sigma draws, errors."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import EDM, VE, RectifiedFlow, VPCosine, VPDiscrete, make_process
from jaxdiff.errors import UserError

ALL = [
    VPDiscrete(),
    VPDiscrete(beta_schedule="linear"),
    VPCosine(),
    VE(),
    EDM(),
    RectifiedFlow(),
    RectifiedFlow(time_sampling="uniform", shift=3.0, time_scale=1.0),
]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize(
    ("beta_start", "beta_end", "steps"),
    [(0.00085, 0.012, 1000), (0.0001, 0.02, 1000), (1e-3, 0.05, 37)],
)
def test_alphas_cumprod_match_diffusers(schedule, beta_start, beta_end, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(
        beta_schedule=schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        num_train_timesteps=steps,
    ).alphas_cumprod.numpy()
    process = VPDiscrete(schedule, beta_start, beta_end, steps)
    ours = process.alphas_cumprod.astype(np.float32)
    # diffusers rounds its betas through a float32 torch.linspace: agreement to float32 rounding.
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=0)


def test_vp_discrete_stable_diffusion_range():
    process = VPDiscrete()
    # Stable Diffusion's sigma range, as k-diffusion / diffusers report it.
    assert process.sigma_min == pytest.approx(0.02917, rel=1e-4)
    assert process.sigma_max == pytest.approx(14.6146, rel=1e-5)
    assert process.sigma_data == 1.0


def test_vp_discrete_sigma_to_t_interpolates_in_log_sigma(x64):
    process = VPDiscrete()
    table = jnp.asarray(process.sigmas)
    # At the table's own sigmas, t is the integer timestep.
    np.testing.assert_allclose(process.sigma_to_t(table), np.arange(1000), atol=1e-8)
    # Halfway between two levels in log sigma is half a timestep.
    mid = jnp.sqrt(table[10] * table[11])
    assert float(process.sigma_to_t(mid)) == pytest.approx(10.5, abs=1e-9)
    # Outside the table t is clamped, as in k-diffusion.
    np.testing.assert_allclose(process.sigma_to_t(jnp.array([1e-4, 1e3])), [0.0, 999.0])


@pytest.mark.parametrize("process", ALL, ids=lambda p: type(p).__name__)
def test_sigma_t_round_trip(process, x64):
    sigma = jnp.geomspace(process.sigma_min, process.sigma_max, 23)
    t = process.sigma_to_t(sigma)
    np.testing.assert_allclose(process.t_to_sigma(t), sigma, rtol=1e-10)
    assert bool(jnp.all(jnp.diff(t) > 0)), "c_noise must increase with sigma"


@pytest.mark.parametrize("process", ALL, ids=lambda p: type(p).__name__)
def test_sample_sigma_within_range(process):
    sigma = process.sample_sigma(jax.random.key(0), (4096,))
    assert sigma.shape == (4096,) and sigma.dtype == jnp.float32
    assert float(sigma.min()) >= process.sigma_min * (1 - 1e-6)
    assert float(sigma.max()) <= process.sigma_max * (1 + 1e-6)


def test_sample_sigma_distributions():
    key = jax.random.key(1)
    edm = EDM()
    log_sigma = np.log(np.asarray(edm.sample_sigma(key, (20000,))))
    # ln sigma ~ N(-1.2, 1.2^2); clipping at [0.002, 80] is > 3 std away on both sides.
    assert log_sigma.mean() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std() == pytest.approx(1.2, abs=0.03)
    ve = VE()
    log_sigma = np.log(np.asarray(ve.sample_sigma(key, (20000,))))
    assert log_sigma.mean() == pytest.approx((math.log(0.01) + math.log(50)) / 2, abs=0.05)
    vp = VPDiscrete()
    drawn = np.asarray(vp.sample_sigma(key, (2000,)))
    assert np.isin(drawn, vp.sigmas.astype(np.float32)).all()


def test_input_scalings(x64):
    sigma = jnp.array([0.1, 1.0, 10.0])
    np.testing.assert_allclose(VPDiscrete().c_in(sigma), 1 / np.sqrt(1 + sigma**2))
    np.testing.assert_allclose(VPCosine().c_in(sigma), 1 / np.sqrt(1 + sigma**2))
    np.testing.assert_allclose(VE().c_in(sigma), np.ones(3))
    np.testing.assert_allclose(EDM().c_in(sigma), 1 / np.sqrt(sigma**2 + 0.25))
    np.testing.assert_allclose(EDM().sigma_to_t(sigma), np.log(sigma) / 4)


def test_vp_cosine_matches_nichol_dhariwal(x64):
    process = VPCosine()
    t = np.array([0.01, 0.3, 0.7, 0.95])
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    alpha_bar = f / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(
        process.t_to_sigma(999 * t), np.sqrt((1 - alpha_bar) / alpha_bar), rtol=1e-10
    )
    assert process.sigma_min == pytest.approx(0.002, rel=0.02)
    assert process.sigma_max == pytest.approx(80, rel=0.01)


def test_rectified_flow_is_the_straight_line_from_data_to_noise(x64):
    """`c_in(sigma) * (x0 + sigma * eps) = (1 - t) x0 + t eps` with the time input 1000 t."""
    process = RectifiedFlow()
    t = jnp.array([1e-3, 0.2, 0.5, 0.9, 0.998])
    sigma = process.t_to_sigma(1000 * t)
    np.testing.assert_allclose(sigma, t / (1 - t), rtol=1e-12)
    np.testing.assert_allclose(process.sigma_to_t(sigma), 1000 * t, rtol=1e-12)
    x0, eps = jnp.array([[0.3], [-1.2], [2.0], [0.7], [-0.4]]), jnp.array([[1.1]] * 5)
    np.testing.assert_allclose(
        process.c_in(sigma)[:, None] * (x0 + sigma[:, None] * eps),
        (1 - t)[:, None] * x0 + t[:, None] * eps,
        rtol=1e-12,
    )
    assert process.sigma_max == pytest.approx(999.0) and process.sigma_min == pytest.approx(
        1e-4, rel=1e-3
    )


def test_rectified_flow_training_times():
    """Logit-normal times have the logit's mean and std; uniform ones are uniform; the shift maps
    each draw t to shift t / (1 + (shift - 1) t)."""
    key = jax.random.key(2)
    logit_normal = RectifiedFlow(logit_mean=0.5, logit_std=0.8)
    t = np.asarray(logit_normal.sample_sigma(key, (20000,)), np.float64)
    t = t / (1 + t)
    logits = np.log(t / (1 - t))
    assert logits.mean() == pytest.approx(0.5, abs=0.03)
    assert logits.std() == pytest.approx(0.8, abs=0.03)
    uniform = RectifiedFlow(time_sampling="uniform", t_min=1e-6, t_max=1 - 1e-6)
    u = np.asarray(uniform.sample_sigma(key, (20000,)), np.float64)
    u = u / (1 + u)
    assert np.quantile(u, [0.1, 0.5, 0.9]) == pytest.approx([0.1, 0.5, 0.9], abs=0.015)
    shifted = RectifiedFlow(time_sampling="uniform", t_min=1e-6, t_max=1 - 1e-6, shift=3.0)
    s = np.asarray(shifted.sample_sigma(key, (20000,)), np.float64)
    np.testing.assert_allclose(s / (1 + s), 3 * u / (1 + 2 * u), rtol=2e-3)


def test_processes_are_hashable_and_static_under_jit():
    a, b = make_process("edm", sigma_data=1.0), make_process("edm", sigma_data=1.0)
    assert a == b and hash(a) == hash(b)
    scaled = jax.jit(lambda p, s: p.c_in(s), static_argnums=0)
    assert float(scaled(VPDiscrete(), 1.0)) == pytest.approx(1 / math.sqrt(2))


def test_make_process_errors():
    with pytest.raises(
        UserError, match="process='ddpm' is not supported; accepted: vp_discrete, vp_cosine"
    ):
        make_process("ddpm")
    with pytest.raises(UserError, match="does not take option 'rho'; accepted: sigma_min"):
        make_process("edm", rho=7.0)
    with pytest.raises(UserError, match="beta_schedule='cosine' is not supported"):
        make_process("vp_discrete", beta_schedule="cosine")
    with pytest.raises(UserError, match=re.escape("sigma_min=1.0, sigma_max=0.5")):
        make_process("ve", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(UserError, match="num_train_timesteps=1"):
        make_process("vp_discrete", num_train_timesteps=1)
    with pytest.raises(UserError, match=re.escape("t_max=1.0")):
        make_process("vp_cosine", t_max=1.0)
    with pytest.raises(UserError, match=r"shift=0\.0 must be > 0"):
        make_process("rectified_flow", shift=0.0)
    with pytest.raises(UserError, match=r"logit_std=-1\.0 must be > 0"):
        make_process("rectified_flow", logit_std=-1.0)
    with pytest.raises(UserError, match="time_sampling='beta' is not supported; accepted: uniform"):
        make_process("rectified_flow", time_sampling="beta")
    with pytest.raises(UserError, match=re.escape("t_min=0.0001, t_max=1.0 must satisfy")):
        make_process("rectified_flow", t_max=1.0)
