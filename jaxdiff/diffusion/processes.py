"""Forward diffusion processes in "variance exploding" form `x = x0 + sigma * eps`.

A process knows only its marginals: which noise levels it covers, how its time variable maps to
sigma, how the network input is scaled, and how training draws sigma. Every process here is a
frozen, hashable dataclass with plain Python fields, so it can be a static argument under
`jax.jit`; tables (VP discrete's `alphas_cumprod`) are computed with numpy when first used.

VP processes `z = alpha * x0 + sigma_vp * eps` map to this form by `x = z / alpha`, with
`sigma = sigma_vp / alpha = sqrt((1 - alpha_bar) / alpha_bar)` (Karras et al. 2022, "Elucidating
the Design Space of Diffusion-Based Generative Models", Section 2 and Table 1).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError, check_choice


def _as_float(a: jax.Array | float) -> jax.Array:
    """`a` as a JAX array of at least float32 precision (float64 stays float64)."""
    a = jnp.asarray(a)
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


class Process(abc.ABC):
    """A forward process: noise range, time <-> sigma map, input scaling, training sigmas.

    `input_scale_at_infinity` is the limit of `sigma * c_in(sigma)` as sigma -> inf where the
    process's noise end is finite there (the flow's t = 1), else None: at sigma = inf the sampler
    state is `x / sigma` (see `jaxdiff.samplers.base`), and the network sees it times this.
    """

    input_scale_at_infinity: ClassVar[float | None] = None

    @property
    @abc.abstractmethod
    def sigma_min(self) -> float:
        """Smallest noise level the process covers."""

    @property
    @abc.abstractmethod
    def sigma_max(self) -> float:
        """Largest noise level the process covers (where sampling starts)."""

    @property
    @abc.abstractmethod
    def sigma_data(self) -> float:
        """Standard deviation of the data the process assumes (1 for VP processes)."""

    @abc.abstractmethod
    def c_in(self, sigma: jax.Array) -> jax.Array:
        """Network input scaling: the network sees `c_in(sigma) * x`. Same shape as `sigma`."""

    @abc.abstractmethod
    def sigma_to_t(self, sigma: jax.Array) -> jax.Array:
        """The network's noise conditioning `c_noise(sigma)`. Same shape as `sigma`."""

    @abc.abstractmethod
    def t_to_sigma(self, t: jax.Array) -> jax.Array:
        """Inverse of `sigma_to_t`. Same shape as `t`."""

    @abc.abstractmethod
    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draw training noise levels of the given shape (float32)."""


def _vp_c_in(sigma: jax.Array) -> jax.Array:
    """VP input scaling `alpha = 1 / sqrt(1 + sigma^2)`: the network sees `z = alpha * x`."""
    sigma = _as_float(sigma)
    return jax.lax.rsqrt(1.0 + sigma**2)


@dataclasses.dataclass(frozen=True)
class VPDiscrete(Process):
    """Discrete-time VP process (Ho et al. 2020, DDPM) with `num_train_timesteps` noise levels.

    `alphas_cumprod` follows diffusers' `DDPMScheduler`: betas linear in beta ("linear") or in
    sqrt(beta) ("scaled_linear", Stable Diffusion), `alphas_cumprod = cumprod(1 - betas)`. It is
    computed in float64; diffusers computes the betas with a float32 `torch.linspace`, which
    rounds differently in the last bits, so the two agree to float32 rounding (about 1e-6).

    The network conditioning is the (fractional) timestep in `[0, num_train_timesteps - 1]`,
    found by interpolating linearly in log sigma between the discrete levels, as k-diffusion's
    `DiscreteSchedule.sigma_to_t`. Training draws a uniform integer timestep.
    """

    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    BETA_SCHEDULES: ClassVar[tuple[str, ...]] = ("linear", "scaled_linear")

    def __post_init__(self) -> None:
        check_choice("beta_schedule", self.beta_schedule, self.BETA_SCHEDULES)
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise UserError(
                f"beta_start={self.beta_start}, beta_end={self.beta_end} must satisfy "
                "0 < beta_start < beta_end < 1"
            )
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise UserError(
                f"num_train_timesteps={self.num_train_timesteps!r} must be an integer >= 2"
            )

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """`alpha_bar_t` for t = 0 .. num_train_timesteps - 1, float64. [T]"""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        else:
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        return np.cumprod(1.0 - betas)

    @functools.cached_property
    def sigmas(self) -> np.ndarray:
        """`sqrt((1 - alpha_bar_t) / alpha_bar_t)`, ascending in t, float64. [T]"""
        ac = self.alphas_cumprod
        return np.sqrt((1.0 - ac) / ac)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def sigma_data(self) -> float:
        return 1.0

    def c_in(self, sigma: jax.Array) -> jax.Array:
        return _vp_c_in(sigma)

    def sigma_to_t(self, sigma: jax.Array) -> jax.Array:
        sigma = _as_float(sigma)
        log_sigmas = jnp.asarray(np.log(self.sigmas), sigma.dtype)  # [T], ascending
        steps = jnp.arange(self.num_train_timesteps, dtype=sigma.dtype)  # [T]
        # jnp.interp clamps outside the table, as k-diffusion clamps its interpolation weight.
        return jnp.interp(jnp.log(sigma), log_sigmas, steps)

    def t_to_sigma(self, t: jax.Array) -> jax.Array:
        t = _as_float(t)
        log_sigmas = jnp.asarray(np.log(self.sigmas), t.dtype)  # [T]
        steps = jnp.arange(self.num_train_timesteps, dtype=t.dtype)  # [T]
        return jnp.exp(jnp.interp(t, steps, log_sigmas))

    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        t = jax.random.randint(key, shape, 0, self.num_train_timesteps)
        return jnp.asarray(self.sigmas, jnp.float32)[t]


@dataclasses.dataclass(frozen=True)
class VPCosine(Process):
    """Continuous-time VP process with the cosine schedule (Nichol & Dhariwal 2021, "Improved
    Denoising Diffusion Probabilistic Models", eq. 17).

    `alpha_bar(t) = f(t) / f(0)` with `f(t) = cos((t + s) / (1 + s) * pi / 2)^2` for t in [0, 1];
    `alpha_bar(1) = 0`, so time is limited to `[t_min, t_max]`. The defaults give sigma in about
    [0.002, 80], the range of Karras et al. 2022. The network conditioning is `(M - 1) * t` with
    M = 1000, the continuous-VP `c_noise` of Karras et al. 2022, Table 1, on the scale of a
    1000-step discrete model's timesteps. Training draws t uniformly in `[t_min, t_max]`.
    """

    s: float = 0.008
    t_min: float = 1e-4
    t_max: float = 0.992

    T_SCALE: ClassVar[float] = 999.0

    def __post_init__(self) -> None:
        if not self.s > 0.0:
            raise UserError(f"cosine offset s={self.s} must be > 0")
        if not 0.0 < self.t_min < self.t_max < 1.0:
            raise UserError(
                f"t_min={self.t_min}, t_max={self.t_max} must satisfy 0 < t_min < t_max < 1"
            )

    # With theta(t) = (t + s) / (1 + s) * pi / 2, sigma^2 = (1 - alpha_bar) / alpha_bar
    # = (cos^2 theta(0) - cos^2 theta(t)) / cos^2 theta(t)
    # = sin(theta(t) + theta(0)) * sin(theta(t) - theta(0)) / cos^2 theta(t),
    # which has no cancellation at small t (theta(t) - theta(0) = t / (1 + s) * pi / 2).

    def _sigma_of_time(self, t: jax.Array) -> jax.Array:
        """sigma at process time t in [0, 1)."""
        scale = math.pi / (2 * (1 + self.s))
        theta, theta0 = (t + self.s) * scale, self.s * scale
        return jnp.sqrt(jnp.sin(theta + theta0) * jnp.sin(t * scale)) / jnp.cos(theta)

    def _sigma_at(self, t: float) -> float:
        """`_sigma_of_time` for a Python float, in float64."""
        scale = math.pi / (2 * (1 + self.s))
        theta, theta0 = (t + self.s) * scale, self.s * scale
        return math.sqrt(math.sin(theta + theta0) * math.sin(t * scale)) / math.cos(theta)

    @property
    def sigma_min(self) -> float:
        return self._sigma_at(self.t_min)

    @property
    def sigma_max(self) -> float:
        return self._sigma_at(self.t_max)

    @property
    def sigma_data(self) -> float:
        return 1.0

    def c_in(self, sigma: jax.Array) -> jax.Array:
        return _vp_c_in(sigma)

    def sigma_to_t(self, sigma: jax.Array) -> jax.Array:
        sigma = _as_float(sigma)
        # cos theta(t) = cos theta(0) / sqrt(1 + sigma^2), so
        # tan theta(t) = sqrt(sin^2 theta(0) + sigma^2) / cos theta(0).
        theta0 = self.s * math.pi / (2 * (1 + self.s))
        theta = jnp.arctan2(jnp.sqrt(math.sin(theta0) ** 2 + sigma**2), math.cos(theta0))
        time = theta * (2 * (1 + self.s) / math.pi) - self.s
        return time * self.T_SCALE

    def t_to_sigma(self, t: jax.Array) -> jax.Array:
        return self._sigma_of_time(_as_float(t) / self.T_SCALE)

    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        t = jax.random.uniform(key, shape, jnp.float32, self.t_min, self.t_max)
        return self._sigma_of_time(t).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance exploding process (Song et al. 2021, "Score-Based Generative Modeling through
    Stochastic Differential Equations", SMLD / NCSN++): `x = x0 + sigma * eps`, no input scaling.

    Training draws sigma log-uniformly in `[sigma_min, sigma_max]`. The network conditioning is
    `log(sigma / 2)`, the VE `c_noise` of Karras et al. 2022, Table 1. `sigma_data` is used only
    by the "v" / "edm" parameterizations and the "edm" loss weighting.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        _check_sigma_range(self.sigma_min, self.sigma_max, self.sigma_data)

    def c_in(self, sigma: jax.Array) -> jax.Array:
        return jnp.ones_like(_as_float(sigma))

    def sigma_to_t(self, sigma: jax.Array) -> jax.Array:
        return jnp.log(0.5 * _as_float(sigma))

    def t_to_sigma(self, t: jax.Array) -> jax.Array:
        return 2.0 * jnp.exp(_as_float(t))

    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        log_sigma = jax.random.uniform(
            key, shape, jnp.float32, math.log(self.sigma_min), math.log(self.sigma_max)
        )
        return jnp.exp(log_sigma)


@dataclasses.dataclass(frozen=True)
class EDM(Process):
    """The EDM process (Karras et al. 2022, Table 1 "Ours"): `c_in = 1 / sqrt(sigma^2 +
    sigma_data^2)`, `c_noise = log(sigma) / 4`, training sigmas log-normal with `ln sigma ~
    N(p_mean, p_std^2)`, clipped into `[sigma_min, sigma_max]`.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        _check_sigma_range(self.sigma_min, self.sigma_max, self.sigma_data)
        if not self.p_std > 0.0:
            raise UserError(f"p_std={self.p_std} must be > 0")

    def c_in(self, sigma: jax.Array) -> jax.Array:
        sigma = _as_float(sigma)
        return jax.lax.rsqrt(sigma**2 + self.sigma_data**2)

    def sigma_to_t(self, sigma: jax.Array) -> jax.Array:
        return 0.25 * jnp.log(_as_float(sigma))

    def t_to_sigma(self, t: jax.Array) -> jax.Array:
        return jnp.exp(4.0 * _as_float(t))

    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        log_sigma = self.p_mean + self.p_std * jax.random.normal(key, shape, jnp.float32)
        return jnp.clip(jnp.exp(log_sigma), self.sigma_min, self.sigma_max)


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Process):
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023; Esser et al. 2024,
    SD3): `x_t = (1 - t) x0 + t eps`, a straight line from the data (t = 0) to the noise (t = 1).

    In the contract's form `x = x_t / (1 - t) = x0 + sigma eps`, so `sigma = t / (1 - t)` and the
    network sees `c_in(sigma) x = x_t` with `c_in = 1 / (1 + sigma)`; its time input is
    `time_scale * t` (1000 as SD3 and Flux, 1 as SiT). Training time is limited to
    `[t_min, t_max]`; sampling may start at t = 1, sigma = inf, where the sampler state is
    `x / sigma = x_t` and the network sees it unscaled (`input_scale_at_infinity = 1`).

    Training draws t from `time_sampling`: "uniform", or "logit_normal" (SD3:
    `t = sigmoid(logit_mean + logit_std * n)`), then shifts it towards the noise by `shift`
    (`t -> shift t / (1 + (shift - 1) t)`, SD3's resolution shift; 1 leaves it), clipped into
    `[t_min, t_max]`. The matching network output is the velocity `eps - x0`
    (parameterization "velocity").
    """

    t_min: float = 1e-4
    t_max: float = 0.999
    time_scale: float = 1000.0
    time_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    TIME_SAMPLINGS: ClassVar[tuple[str, ...]] = ("uniform", "logit_normal")
    input_scale_at_infinity: ClassVar[float | None] = 1.0

    def __post_init__(self) -> None:
        check_choice("time_sampling", self.time_sampling, self.TIME_SAMPLINGS)
        if not 0.0 < self.t_min < self.t_max < 1.0:
            raise UserError(
                f"t_min={self.t_min}, t_max={self.t_max} must satisfy 0 < t_min < t_max < 1"
            )
        for name in ("time_scale", "logit_std", "shift"):
            if not getattr(self, name) > 0.0:
                raise UserError(f"{name}={getattr(self, name)} must be > 0")

    @property
    def sigma_min(self) -> float:
        return self.t_min / (1.0 - self.t_min)

    @property
    def sigma_max(self) -> float:
        return self.t_max / (1.0 - self.t_max)

    @property
    def sigma_data(self) -> float:
        return 1.0

    def c_in(self, sigma: jax.Array) -> jax.Array:
        return 1.0 / (1.0 + _as_float(sigma))

    def sigma_to_t(self, sigma: jax.Array) -> jax.Array:
        sigma = _as_float(sigma)
        return jnp.where(jnp.isinf(sigma), self.time_scale, self.time_scale * sigma / (1.0 + sigma))

    def t_to_sigma(self, t: jax.Array) -> jax.Array:
        time = _as_float(t) / self.time_scale
        return time / (1.0 - time)

    def sample_sigma(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        if self.time_sampling == "uniform":
            t = jax.random.uniform(key, shape, jnp.float32)
        else:
            t = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, shape))
        t = self.shift * t / (1.0 + (self.shift - 1.0) * t)
        return jnp.clip(t / (1.0 - t), self.sigma_min, self.sigma_max).astype(jnp.float32)


def _check_sigma_range(sigma_min: float, sigma_max: float, sigma_data: float) -> None:
    if not 0.0 < sigma_min < sigma_max:
        raise UserError(
            f"sigma_min={sigma_min}, sigma_max={sigma_max} must satisfy 0 < sigma_min < sigma_max"
        )
    if not sigma_data > 0.0:
        raise UserError(f"sigma_data={sigma_data} must be > 0")


PROCESSES: dict[str, type[Process]] = {
    "vp_discrete": VPDiscrete,
    "vp_cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}


def make_process(name: str, **kwargs: Any) -> Process:
    """Build a process by name ("vp_discrete", "vp_cosine", "ve", "edm", "rectified_flow") from
    its fields."""
    check_choice("process", name, PROCESSES)
    cls = PROCESSES[name]
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(
            f"process {name!r} does not take option {unknown[0]!r}; accepted: "
            + ", ".join(accepted)
        )
    return cls(**kwargs)
