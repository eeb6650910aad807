"""`Diffusion`: a process, a parameterization and a loss weighting bundled for the trainer.

It turns a network `net(x_in, t, *cond) -> F` into the denoiser (Karras et al. 2022, eq. 7)

    D(x, sigma, *cond) = c_skip * x + c_out * net(c_in * x, c_noise(sigma), *cond)

with `c_in` and `c_noise = process.sigma_to_t` from the process and `(c_skip, c_out)` from the
parameterization, and gives its training loss and sampling sigmas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.losses import WEIGHTINGS, denoising_loss, target_weight
from jaxdiff.diffusion.parameterization import (
    PARAMETERIZATIONS,
    network_target,
    scalings,
    scalings_at_infinity,
)
from jaxdiff.diffusion.processes import Process
from jaxdiff.diffusion.schedules import make_sigmas
from jaxdiff.errors import UserError, check_choice

# net(x_in [B, ...], t [B], *cond) -> F [B, ...]
Network = Callable[..., jax.Array]
# D(x [B, ...], sigma [] or [B], *cond) -> x0_hat [B, ...]
Denoiser = Callable[..., jax.Array]


def _per_example(sigma: jax.Array, x: jax.Array) -> jax.Array:
    """sigma [] or [B] -> [B, 1, ..., 1], broadcastable against x [B, ...]."""
    sigma = jnp.broadcast_to(sigma, x.shape[:1])  # [B]
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """Process + parameterization + loss weighting. Frozen and hashable: static under jit.

    `parameterization` is one of "eps", "v", "x0", "edm" (see `parameterization.py`);
    `weighting` one of "uniform", "min_snr", "edm" (see `losses.py`); `min_snr_gamma` is the
    gamma of Min-SNR-gamma weighting. Every combination is well defined: the parameterization
    only fixes `(c_skip, c_out)`, using the process's `sigma_data` for "v" and "edm".
    """

    process: Process
    parameterization: str = "eps"
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.process, Process):
            raise UserError(
                f"process {self.process!r} is not a Process; build one with make_process"
            )
        check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        if not self.min_snr_gamma > 0.0:
            raise UserError(f"min_snr_gamma={self.min_snr_gamma} must be > 0")

    def limits_at_infinity(self) -> tuple[float, float, float] | None:
        """`(sigma * c_in, sigma * c_skip, c_out)` as sigma -> inf, or None where the process
        or the parameterization has no finite limit there (only a flow's t = 1 has one)."""
        scale = self.process.input_scale_at_infinity
        skip_out = scalings_at_infinity(self.parameterization, self.process.sigma_data)
        return None if scale is None or skip_out is None else (scale, *skip_out)

    def _network_io(
        self, net: Network, x: jax.Array, sigma: jax.Array, cond: tuple[Any, ...]
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`(F, c_skip, c_out)` for x [B, ...] and sigma [] or [B]; scalings shaped [B, 1, ...].
        Where sigma = inf, x is the sampler state `x / sigma` and the scalings their limits."""
        sigma_b = _per_example(sigma, x)  # [B, 1, ..., 1]
        t = self.process.sigma_to_t(jnp.broadcast_to(sigma, x.shape[:1]))  # [B]
        c_skip, c_out = scalings(self.parameterization, sigma_b, self.process.sigma_data)
        c_in = self.process.c_in(sigma_b)
        limits = self.limits_at_infinity()
        if limits is not None:
            inf = jnp.isinf(sigma_b)
            c_in, c_skip, c_out = (
                jnp.where(inf, limit, c)
                for limit, c in zip(limits, (c_in, c_skip, c_out), strict=True)
            )
        elif isinstance(sigma, float | np.ndarray | np.floating) and np.any(np.isinf(sigma)):
            # Host values only: reading a device array back would sync on every eager call.
            raise UserError(
                f"sigma = inf: process {type(self.process).__name__} with parameterization "
                f"{self.parameterization!r} has no finite limit there; start at its sigma_max "
                "(a flow process with 'velocity', 'x0', 'v' or 'edm' has one)"
            )
        out = net(c_in * x, t, *cond)  # [B, ...]
        return out, c_skip, c_out

    def denoiser(self, net: Network) -> Denoiser:
        """The denoiser `D(x, sigma, *cond) -> x0_hat` of `net`; sigma is [] or [B]."""

        def denoise(x: jax.Array, sigma: jax.Array, *cond: Any) -> jax.Array:
            # At sigma = inf (a flow's t = 1) x is the sampler state `x / sigma`.
            out, c_skip, c_out = self._network_io(net, x, sigma, cond)
            return c_skip * x + c_out * out

        return denoise

    def loss_at(
        self, net: Network, x0: jax.Array, noise: jax.Array, sigma: jax.Array, *cond: Any
    ) -> jax.Array:
        """Weighted denoising loss at given noise levels. x0, noise: [B, ...]; sigma: [B] -> [B].

        Computed in the network's target space: `target_weight * mean((F - target)^2)`.
        """
        sigma_b = _per_example(sigma, x0)  # [B, 1, ..., 1]
        x = x0 + sigma_b * noise  # [B, ...]
        out, _, _ = self._network_io(net, x, sigma, cond)
        target = network_target(
            x0, noise, sigma_b, self.parameterization, self.process.sigma_data
        )  # [B, ...]
        weight = target_weight(
            self.weighting,
            jnp.broadcast_to(sigma, x0.shape[:1]),
            self.parameterization,
            self.process.sigma_data,
            self.min_snr_gamma,
        )  # [B]
        return denoising_loss(out, target, weight)

    def loss(self, net: Network, x0: jax.Array, keys: jax.Array, *cond: Any) -> jax.Array:
        """Per-example training loss [B] for clean data x0 [B, ...] and one PRNG key per example
        (keys [B]): each example draws its sigma from the process's training distribution and its
        Gaussian noise from its own key, so the draw does not depend on the batch it is in.
        """
        dtype = jnp.promote_types(x0.dtype, jnp.float32)

        def draw(k: jax.Array) -> tuple[jax.Array, jax.Array]:
            k_sigma, k_noise = jax.random.split(k)
            sigma = self.process.sample_sigma(k_sigma, ())  # []
            noise = jax.random.normal(k_noise, x0.shape[1:], dtype)  # [...]
            return sigma.astype(dtype), noise

        sigma, noise = jax.vmap(draw)(keys)  # [B], [B, ...]
        return self.loss_at(net, x0.astype(dtype), noise, sigma, *cond)

    def sampling_sigmas(self, n: int, schedule: str = "karras", **options: Any) -> jax.Array:
        """`[n + 1]` descending sampling sigmas from the schedule `schedule`, a name in
        `jaxdiff.diffusion.SCHEDULES` ("karras", "exponential", "discrete", ...), over the
        process's sigma range; `options` go to the schedule (`sigma_min` / `sigma_max` override
        the range of the continuous ones). A schedule from sigma = inf needs a parameterization
        with a limit there (`limits_at_infinity`).
        """
        sigmas = make_sigmas(schedule, n, self.process, **options)
        if self.limits_at_infinity() is None and not np.isfinite(sigmas[0]):
            raise UserError(
                f"sigma schedule {schedule!r} starts at sigma = inf, where parameterization "
                f"{self.parameterization!r} has no finite limit; accepted: 'velocity', 'x0', 'v', "
                "'edm'"
            )
        return sigmas
