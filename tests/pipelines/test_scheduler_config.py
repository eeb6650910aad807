"""`SchedulerConfig.from_dict(config).grid(sampler, n)` against the diffusers scheduler that runs
the same algorithm, built with `from_config(config)` and `set_timesteps(n)`.

For every sampler and config the grid must give: the sigmas at which diffusers evaluates the
model (its own `sigmas` where it keeps them, else the sigma of each timestep), the sigma its last
step lands on, the network conditioning (integer timesteps, or the fractional timestep of each
sigma) and the standard deviation of the noise a run starts from. diffusers' VP schedulers
(`init_noise_sigma == 1`) hold `x / sqrt(1 + sigma^2)`, so their unit start noise has std
`sqrt(1 + sigma_0^2)` in `x`; its Euler family holds `x` and starts from `init_noise_sigma`.

The configs are SD 1.5's (no `timestep_spacing`, so each diffusers class uses its own default
spacing) and variants of it. Heun repeats every timestep but the first, and PNDM (PLMS,
`skip_prk_steps`) its second one; the distinct values, in order, are the evaluation levels.
"""

import inspect

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import SD15_SCHEDULER

from jaxdiff.benchmarks.diffusers_reference import sigma_at
from jaxdiff.errors import UserError
from jaxdiff.pipelines.scheduler_config import SchedulerConfig

# jaxdiff sampler -> the diffusers scheduler it matches.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "plms": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
    "ddpm": "DDPMScheduler",
}
DDIM_FAMILY = ("ddim", "plms", "ddpm")  # no `sigmas`, no Karras sigmas in diffusers
EULER_FAMILY = ("euler", "heun", "lms")  # hold x itself (init_noise_sigma != 1)

CONFIGS = {
    "sd15": SD15_SCHEDULER,
    "leading": {**SD15_SCHEDULER, "timestep_spacing": "leading"},
    "trailing": {**SD15_SCHEDULER, "timestep_spacing": "trailing"},
    "linspace-alpha-to-one": {
        **SD15_SCHEDULER,
        "timestep_spacing": "linspace",
        "set_alpha_to_one": True,
    },
    "alpha-to-one": {**SD15_SCHEDULER, "set_alpha_to_one": True},
    "offset-0-alpha-to-one": {**SD15_SCHEDULER, "steps_offset": 0, "set_alpha_to_one": True},
    "karras": {**SD15_SCHEDULER, "use_karras_sigmas": True},
    "karras-leading": {
        **SD15_SCHEDULER,
        "use_karras_sigmas": True,
        "timestep_spacing": "leading",
    },
    "karras-trailing": {
        **SD15_SCHEDULER,
        "use_karras_sigmas": True,
        "timestep_spacing": "trailing",
    },
}
# DDIM-family grids ending at timestep 0 (test_last_timestep_0_with_final_alpha_is_a_user_error).
LINSPACE = {**SD15_SCHEDULER, "timestep_spacing": "linspace"}
OFFSET_0 = {**SD15_SCHEDULER, "steps_offset": 0}
STEPS = (1, 7, 10, 25)
# diffusers keeps float32 tables and sigmas: relative differences up to 1.3e-5 at timestep 999.
RTOL = 3e-5


def _cases():
    """(sampler, config name, n) for every pair diffusers implements."""
    for config_name, config in CONFIGS.items():
        karras = config.get("use_karras_sigmas", False)
        for sampler in SCHEDULERS:
            if karras and sampler in DDIM_FAMILY:
                continue  # the diffusers classes ignore use_karras_sigmas
            for n in STEPS:
                if karras and sampler == "deis" and n == 1:
                    continue  # diffusers' one step lands on its own sigma: no step at all
                yield pytest.param(sampler, config_name, n)


def diffusers_scheduler(sampler: str, config: dict, n: int):
    scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(config)
    scheduler.set_timesteps(n)
    return scheduler


def distinct(values) -> np.ndarray:
    """`values` without consecutive repeats, float64."""
    values = np.asarray(values, np.float64)
    keep = np.concatenate([[True], values[1:] != values[:-1]])
    return values[keep]


def evaluation_sigmas(sampler: str, scheduler, n: int) -> np.ndarray:
    """The sigmas at which diffusers evaluates the model in its n steps. [n]"""
    if sampler in DDIM_FAMILY:
        timesteps = distinct(scheduler.timesteps)
        assert timesteps.shape == (n,)
        return np.asarray([sigma_at(scheduler, t) for t in timesteps])
    sigmas = distinct(scheduler.sigmas)
    assert sigmas.shape[0] >= n
    return sigmas[:n]


def ddim_landings(scheduler) -> np.ndarray:
    """The sigmas DDIM / PNDM steps land on: `DDIMScheduler.step` and
    `PNDMScheduler._get_prev_sample` go from t to `t - T // n`, and to `final_alpha_cumprod`
    below timestep 0. [n]"""
    timesteps = distinct(scheduler.timesteps).astype(int)
    previous = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas = [
        float(scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod)
        for t in previous
    ]
    return np.sqrt((1.0 - np.asarray(alphas)) / np.asarray(alphas))


def final_sigma(sampler: str, scheduler) -> float:
    """The sigma diffusers' last step lands on."""
    if sampler in ("ddim", "plms"):
        return float(ddim_landings(scheduler)[-1])
    if sampler == "ddpm":
        # DDPMScheduler.step uses alpha_bar = 1 (sigma 0) after its last timestep.
        assert scheduler.previous_timestep(int(scheduler.timesteps[-1])) < 0
        return 0.0
    return float(scheduler.sigmas[-1])


@pytest.mark.parametrize(("sampler", "config_name", "n"), _cases())
def test_grid_matches_diffusers(sampler, config_name, n):
    config = CONFIGS[config_name]
    grid = SchedulerConfig.from_dict(config).grid(sampler, n)
    scheduler = diffusers_scheduler(sampler, config, n)
    sigmas = np.asarray(grid.sigmas, np.float64)
    want = evaluation_sigmas(sampler, scheduler, n)
    last = final_sigma(sampler, scheduler)
    if n > 1 and np.isclose(last, want[-1], rtol=RTOL):
        # diffusers' last step lands where it starts (DEIS with Karras sigmas): a no-op step,
        # so the grid ends there, one step shorter.
        np.testing.assert_allclose(sigmas, want, rtol=RTOL)
        return
    assert sigmas.shape == (n + 1,)
    np.testing.assert_allclose(sigmas[:-1], want, rtol=RTOL)
    if last == 0.0:
        assert sigmas[-1] == 0.0
    else:
        np.testing.assert_allclose(sigmas[-1], last, rtol=RTOL)


DDIM_ELSEWHERE = (
    "documented (jaxdiff.diffusion.schedules.discrete): diffusers' DDIM / PNDM step from t to "
    "t - T // n, which is not the next timestep of a linspace grid or of a trailing grid with n "
    "not dividing T"
)


def _ddim_cases():
    """(sampler, config name, n) of DDIM and PNDM on the non-Karras configs."""
    for config_name, config in CONFIGS.items():
        if config.get("use_karras_sigmas", False):
            continue
        spacing = config.get("timestep_spacing", "leading")
        for sampler in ("ddim", "plms"):
            for n in STEPS:
                elsewhere = (spacing == "linspace" and n > 1) or (
                    spacing == "trailing" and 1000 % n
                )
                marks = pytest.mark.xfail(strict=True, raises=AssertionError, reason=DDIM_ELSEWHERE)
                yield pytest.param(sampler, config_name, n, marks=marks if elsewhere else ())


@pytest.mark.parametrize(("sampler", "config_name", "n"), _ddim_cases())
def test_ddim_family_steps_land_on_the_grid(sampler, config_name, n):
    """A jaxdiff sampler steps from one grid sigma to the next; diffusers' DDIM and PNDM step by
    `T // n` timesteps, which lands on the same levels for "leading" spacing and for "trailing"
    with n dividing T."""
    config = CONFIGS[config_name]
    grid = SchedulerConfig.from_dict(config).grid(sampler, n)
    landings = ddim_landings(diffusers_scheduler(sampler, config, n))
    np.testing.assert_allclose(np.asarray(grid.sigmas[1:], np.float64), landings, rtol=RTOL)


@pytest.mark.parametrize(("sampler", "config_name", "n"), _cases())
def test_network_conditioning_matches_diffusers(sampler, config_name, n):
    """Integer timesteps where diffusers' `timesteps` are integers (the network sees the rounded
    timestep of each sigma, which must be diffusers' timestep exactly); otherwise the fractional
    timestep of each sigma, which is diffusers' float timestep."""
    config = CONFIGS[config_name]
    settings = SchedulerConfig.from_dict(config)
    grid = settings.grid(sampler, n)
    scheduler = diffusers_scheduler(sampler, config, n)
    timesteps = distinct(scheduler.timesteps)
    assert grid.integer_timesteps == (not torch.is_floating_point(scheduler.timesteps))
    levels = grid.sigmas[grid.sigmas > 0][:n]  # where the network is evaluated
    t = np.asarray(settings.process.sigma_to_t(jnp.asarray(levels)), np.float64)
    if grid.integer_timesteps:
        np.testing.assert_array_equal(np.round(t), timesteps[: t.shape[0]])
    else:
        np.testing.assert_allclose(t, timesteps[: t.shape[0]], rtol=0, atol=2e-3)
    # The timesteps `denoising_end` / `denoising_start` cut are diffusers' own (a Karras grid's
    # fractional ones found from its sigmas as diffusers does, to 2e-3).
    atol = 2e-3 if "karras" in config_name and not grid.integer_timesteps else 0
    want = timesteps[: grid.timesteps.shape[0]]
    np.testing.assert_allclose(grid.timesteps, want, rtol=0, atol=atol)
    assert grid.timesteps.shape[0] == grid.sigmas.shape[0] - 1


@pytest.mark.parametrize(("sampler", "config_name", "n"), _cases())
def test_start_std_matches_init_noise_sigma(sampler, config_name, n):
    config = CONFIGS[config_name]
    grid = SchedulerConfig.from_dict(config).grid(sampler, n)
    scheduler = diffusers_scheduler(sampler, config, n)
    init = float(scheduler.init_noise_sigma)
    if sampler in EULER_FAMILY:
        np.testing.assert_allclose(grid.start_std, init, rtol=RTOL)
    else:
        sigma_0 = evaluation_sigmas(sampler, scheduler, n)[0]
        assert init == 1.0
        np.testing.assert_allclose(grid.start_std, init * np.sqrt(1.0 + sigma_0**2), rtol=RTOL)


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
@pytest.mark.parametrize("config", [LINSPACE, OFFSET_0], ids=["linspace", "offset-0"])
def test_a_no_op_last_step_ends_the_grid_one_step_early(sampler, config):
    """diffusers' DDIM / PNDM with set_alpha_to_one=False on a grid whose last timestep is 0
    ("linspace", or "leading" with steps_offset 0) take their last step from timestep 0 to
    alpha_bar_0, the same noise level: a no-op. The grid ends at that level, one step shorter;
    a single such step is a one-line UserError."""
    scheduler = diffusers_scheduler(sampler, config, 10)
    assert distinct(scheduler.timesteps)[-1] == 0
    assert np.isclose(final_sigma(sampler, scheduler), sigma_at(scheduler, 0))
    grid = SchedulerConfig.from_dict(config).grid(sampler, 10)
    np.testing.assert_allclose(grid.sigmas, evaluation_sigmas(sampler, scheduler, 10), rtol=RTOL)
    if config is OFFSET_0:
        with pytest.raises(UserError, match="one step from timestep 0") as error:
            SchedulerConfig.from_dict(config).grid(sampler, 1)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_missing_set_alpha_to_one_follows_the_scheduler_default(sampler):
    """DDIMScheduler defaults to set_alpha_to_one=True, PNDMScheduler to False."""
    config = {k: v for k, v in SD15_SCHEDULER.items() if k != "set_alpha_to_one"}
    grid = SchedulerConfig.from_dict(config).grid(sampler, 10)
    scheduler = diffusers_scheduler(sampler, config, 10)
    np.testing.assert_allclose(grid.sigmas[-1], final_sigma(sampler, scheduler), rtol=RTOL)


def test_karras_sigma_schedule_overrides_the_config():
    """`sigma_schedule="karras"` on a config without Karras sigmas is the Karras grid of a config
    with them, and "discrete" turns a config's Karras sigmas off."""
    plain = SchedulerConfig.from_dict(SD15_SCHEDULER)
    with_karras = SchedulerConfig.from_dict(CONFIGS["karras"])
    for sampler in ("euler", "dpmpp_2m"):
        np.testing.assert_array_equal(
            plain.grid(sampler, 10, "karras").sigmas, with_karras.grid(sampler, 10).sigmas
        )
        np.testing.assert_array_equal(
            with_karras.grid(sampler, 10, "discrete").sigmas, plain.grid(sampler, 10).sigmas
        )


@pytest.mark.parametrize(
    "config",
    [
        SD15_SCHEDULER,
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"num_train_timesteps": 500},
        {},
    ],
    ids=["sd15", "linear", "T500", "defaults"],
)
def test_process_matches_diffusers_alphas_cumprod(config):
    """Missing keys take DDPMScheduler's defaults, as diffusers' `from_config` does."""
    process = SchedulerConfig.from_dict(config).process
    want = diffusers.DDPMScheduler.from_config(config).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(process.alphas_cumprod, want, rtol=1e-5)


@pytest.mark.parametrize(
    ("prediction_type", "parameterization"),
    [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0"), (None, "eps")],
)
def test_prediction_type(prediction_type, parameterization):
    config = dict(SD15_SCHEDULER)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    assert SchedulerConfig.from_dict(config).parameterization == parameterization


def _clip_default(class_name: str) -> bool:
    parameter = inspect.signature(getattr(diffusers, class_name)).parameters.get("clip_sample")
    return bool(parameter.default) if parameter is not None else False


@pytest.mark.parametrize("sampler", SCHEDULERS)
def test_clip_sample_defaults_to_the_counterparts_default(sampler):
    """Without `clip_sample` a sampler clips as its diffusers class does by default (DDIM,
    DDPM); classes without the option never clip."""
    config = {k: v for k, v in SD15_SCHEDULER.items() if k != "clip_sample"}
    clip_range, threshold = SchedulerConfig.from_dict(config).x0_limits(sampler)
    assert clip_range == (1.0 if _clip_default(SCHEDULERS[sampler]) else None)
    assert threshold is None


@pytest.mark.parametrize(
    ("sampler", "fields", "clip_range", "threshold"),
    [
        ("ddim", {"clip_sample": False}, None, None),
        ("ddim", {"clip_sample": True}, 1.0, None),
        ("ddpm", {"clip_sample": True, "clip_sample_range": 2.5}, 2.5, None),
        ("ddim", {"clip_sample_range": 1.5}, 1.5, None),
        ("heun", {"clip_sample": True}, 1.0, None),
        ("dpmpp_2m", {"clip_sample": True}, None, None),  # DPM-Solver has no clipping
        ("ddim", {"thresholding": True}, None, (0.995, 1.0)),
        ("unipc", {"thresholding": True}, None, (0.995, 1.0)),
        ("euler", {"thresholding": True}, None, None),  # Euler has no thresholding
        (
            "dpmpp_2m",
            {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
            None,
            (0.9, 1.5),
        ),
        # diffusers thresholds instead of clipping when both are set.
        ("ddim", {"thresholding": True, "clip_sample": True}, None, (0.995, 1.0)),
    ],
)
def test_clipping_and_thresholding_fields(sampler, fields, clip_range, threshold):
    config = {k: v for k, v in SD15_SCHEDULER.items() if k != "clip_sample"}
    limits = SchedulerConfig.from_dict({**config, **fields}).x0_limits(sampler)
    assert limits == (clip_range, threshold)


def test_threshold_defaults_are_diffusers_defaults():
    parameters = inspect.signature(diffusers.DDPMScheduler).parameters
    want = (
        parameters["dynamic_thresholding_ratio"].default,
        parameters["sample_max_value"].default,
    )
    assert SchedulerConfig.from_dict({"thresholding": True}).x0_limits("ddim") == (None, want)


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"rescale_betas_zero_snr": True}, ("rescale_betas_zero_snr", "True")),
        ({"trained_betas": [0.001, 0.002]}, ("trained_betas", "0.001")),
        ({"timestep_type": "continuous"}, ("timestep_type", "continuous")),
        ({"use_exponential_sigmas": True}, ("use_exponential_sigmas", "True")),
        ({"prediction_type": "flow"}, ("prediction_type", "flow", "epsilon", "v_prediction")),
        ({"beta_schedule": "squaredcos_cap_v2"}, ("squaredcos_cap_v2", "scaled_linear")),
    ],
)
def test_unsupported_config_values_are_one_line_user_errors(fields, names):
    with pytest.raises(UserError) as error:
        SchedulerConfig.from_dict({**SD15_SCHEDULER, **fields})
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize("sigma_schedule", ["exponential", "Karras"])
def test_unknown_sigma_schedule_is_a_one_line_user_error(sigma_schedule):
    settings = SchedulerConfig.from_dict(SD15_SCHEDULER)
    with pytest.raises(UserError) as error:
        settings.grid("euler", 5, sigma_schedule)
    message = str(error.value)
    assert "\n" not in message
    assert repr(sigma_schedule) in message and "discrete" in message and "karras" in message


def test_safe_values_of_unsupported_fields_are_accepted():
    """diffusers' own defaults for the fields jaxdiff does not implement pass."""
    config = {
        **SD15_SCHEDULER,
        "rescale_betas_zero_snr": False,
        "trained_betas": None,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "timestep_type": "discrete",
    }
    assert SchedulerConfig.from_dict(config).parameterization == "eps"
