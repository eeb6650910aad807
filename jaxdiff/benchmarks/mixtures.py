"""An analytic Gaussian-mixture data set with its exact denoiser and probability-flow ODE.

Data `x0 ~ sum_k w_k N(mu_k, diag(v_k))`. Noised with `x = x0 + sigma * eps`, each component stays
Gaussian, `N(mu_k, diag(v_k + sigma^2))`, so everything a sampler needs is closed-form:

- responsibilities `r_k(x, sigma) = softmax_k(log w_k + log N(x; mu_k, v_k + sigma^2))`;
- the exact denoiser
  `D(x, sigma) = E[x0 | x] = sum_k r_k (mu_k + v_k / (v_k + sigma^2) (x - mu_k))`;
- the PF-ODE velocity `dx/dsigma = (x - D) / sigma = sum_k r_k sigma (x - mu_k) / (v_k + sigma^2)`,
  written without the division by sigma so that it is finite at sigma = 0.

The reference solution of the PF-ODE is float64 DOP853 (an 8th-order adaptive Runge-Kutta, Hairer
et al.) from `scipy.integrate.solve_ivp` at tight tolerance, independent of every jaxdiff sampler.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from jaxdiff.errors import UserError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Mixture weights `[K]` (summing to 1), means `[K, d]` and diagonal variances `[K, d]`."""

    weights: jax.Array
    means: jax.Array
    variances: jax.Array

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _component_stats(self, x: jax.Array, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Responsibilities `[B, K]` and noised variances `[K, d]` at noise level sigma."""
        var = self.variances + sigma**2  # [K, d]
        diff = x[:, None, :] - self.means[None]  # [B, K, d]
        log_lik = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)  # [B, K]
        return jax.nn.softmax(jnp.log(self.weights) + log_lik, axis=-1), var

    def responsibilities(self, x: jax.Array, sigma: jax.Array | float) -> jax.Array:
        """`p(component k | x)` for `x = x0 + sigma * eps`. x: [B, d] -> [B, K]"""
        return self._component_stats(x, jnp.asarray(sigma, x.dtype))[0]

    def denoise(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """The exact denoiser `E[x0 | x0 + sigma * eps = x]`. x: [B, d], sigma: [] -> [B, d]

        At sigma = inf, where a sampler's state is the unit noise (`jaxdiff.samplers.base`), the
        limit: the data mean, since the noise there carries nothing of x0."""
        sigma = jnp.asarray(sigma, x.dtype)
        at_infinity = jnp.isinf(sigma)
        r, var = self._component_stats(x, jnp.where(at_infinity, 1.0, sigma))
        shrink = self.variances / var  # [K, d]
        posterior = self.means + shrink * (x[:, None, :] - self.means)  # [B, K, d]
        mean = (self.weights @ self.means).astype(x.dtype)  # [d]
        return jnp.where(at_infinity, mean, jnp.einsum("bk,bkd->bd", r, posterior))

    def velocity(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """PF-ODE velocity `dx/dsigma = (x - D(x, sigma)) / sigma`, finite at 0. [B, d]"""
        sigma = jnp.asarray(sigma, x.dtype)
        r, var = self._component_stats(x, sigma)
        per_component = sigma * (x[:, None, :] - self.means) / var  # [B, K, d]
        return jnp.einsum("bk,bkd->bd", r, per_component)

    def sample(self, key: jax.Array, n: int, dtype: jnp.dtype = jnp.float32) -> tuple:
        """Exact samples `(x0 [n, d], component [n])`."""
        k_comp, k_eps = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))  # [n]
        eps = jax.random.normal(k_eps, (n, self.dim), dtype)
        x0 = self.means[comp] + jnp.sqrt(self.variances[comp]) * eps
        return x0.astype(dtype), comp

    def sample_noised(
        self, key: jax.Array, n: int, sigma: float, dtype: jnp.dtype = jnp.float32
    ) -> jax.Array:
        """Exact samples of the noised mixture `x0 + sigma * eps`; at sigma = inf the sampler
        state there, the unit noise `eps`. [n, d]"""
        k_data, k_noise = jax.random.split(key)
        x0, _ = self.sample(k_data, n, dtype)
        eps = jax.random.normal(k_noise, x0.shape, dtype)
        return eps if math.isinf(sigma) else x0 + sigma * eps


@jax.jit
def exact_denoise(mixture: GaussianMixture, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """`mixture.denoise` compiled once per shape and dtype, for host loops that call it step by
    step (diffusers' schedulers). x: [B, d], sigma: [] -> [B, d]"""
    return mixture.denoise(x, sigma)


def make_mixture(
    dim: int = 2,
    components: int = 8,
    spread: float = 1.0,
    component_std: float = 0.25,
    seed: int = 0,
) -> GaussianMixture:
    """A random mixture: means `N(0, spread^2)` per coordinate, per-coordinate standard deviations
    log-uniform in `[component_std / 2, component_std]`, weights from a Dirichlet(5) so that every
    mode matters. Smaller `component_std` makes the modes sharper (a harder ODE near sigma = 0).
    Float64 arrays; computations run in the dtype of the inputs."""
    for name, value in (("dim", dim), ("components", components)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"mixture {name}={value!r} must be a positive integer")
    if not (spread > 0 and component_std > 0):
        raise UserError(
            f"mixture spread={spread} and component_std={component_std} must both be > 0"
        )
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 5.0))
    means = rng.normal(0.0, spread, (components, dim))
    stds = component_std * np.exp(rng.uniform(np.log(0.5), 0.0, (components, dim)))
    return GaussianMixture(
        weights=np.asarray(weights, np.float64),
        means=np.asarray(means, np.float64),
        variances=np.asarray(stds**2, np.float64),
    )


def as_dtype(mixture: GaussianMixture, dtype: jnp.dtype) -> GaussianMixture:
    """The mixture's arrays as JAX arrays of `dtype` (float64 needs `jax.enable_x64`)."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), mixture)


@functools.partial(jax.jit, static_argnums=3)
def _flat_velocity(
    mixture: GaussianMixture, y: jax.Array, sigma: jax.Array, shape: tuple[int, ...]
) -> jax.Array:
    """The PF-ODE velocity of the flattened state `y [prod(shape)]`, as `solve_ivp` wants it."""
    return mixture.velocity(y.reshape(shape), sigma).reshape(-1)


@functools.partial(jax.jit, static_argnums=3)
def _flat_flow_velocity(
    mixture: GaussianMixture, y: jax.Array, t: jax.Array, shape: tuple[int, ...]
) -> jax.Array:
    """The PF-ODE in flow time: `dx_t/dt = eps_hat - D` for `x_t = x / (1 + sigma)`,
    `t = sigma / (1 + sigma)`, with `eps_hat = dx/dsigma` from `velocity` (finite at t = 0); at
    t = 1 (sigma = inf, where `x_t` is the unit noise) its limit `x_t - D`.
    y: the flattened `x_t [prod(shape)]`."""
    x_t = y.reshape(shape)
    finite = t < 1
    safe = jnp.where(finite, t, 0.5)
    sigma, x = safe / (1 - safe), x_t / (1 - safe)
    v = mixture.velocity(x, sigma) - mixture.denoise(x, sigma)
    at_infinity = x_t - mixture.denoise(x_t, jnp.inf)
    return jnp.where(finite, v, at_infinity).reshape(-1)


def flow_solution(
    mixture: GaussianMixture,
    x_t: np.ndarray,
    t_start: float,
    times: np.ndarray,
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> tuple[np.ndarray, int]:
    """Solve the PF-ODE in flow time from `x_t [B, d]` at `t_start` (1 allowed: the unit noise)
    to each of the descending `times` [m] (the last one 0 allowed), float64 DOP853. Returns
    `(x_t at each time [m, B, d], number of velocity evaluations)`."""
    x_t = np.asarray(x_t, np.float64)
    times = np.asarray(times, np.float64)
    with jax.enable_x64(True):
        mix64 = as_dtype(mixture, jnp.float64)

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            return np.asarray(_flat_flow_velocity(mix64, jnp.asarray(y), jnp.asarray(t), x_t.shape))

        result = solve_ivp(
            rhs,
            (t_start, float(times[-1])),
            x_t.reshape(-1),
            method="DOP853",
            t_eval=times,
            rtol=rtol,
            atol=atol,
        )
    if not result.success:
        raise RuntimeError(f"reference flow ODE solve failed: {result.message}")
    return result.y.T.reshape((len(times), *x_t.shape)), int(result.nfev)


def reference_solution(
    mixture: GaussianMixture,
    x: np.ndarray,
    sigma_start: float,
    sigma_end: float = 0.0,
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> tuple[np.ndarray, int]:
    """Solve the PF-ODE from `x [B, d]` at `sigma_start` down to `sigma_end` in float64 with
    DOP853. Returns `(x_end [B, d], number of velocity evaluations)`. All B samples are one
    ODE system; the velocity of each depends only on its own row, so the adaptive step size is
    set by the hardest sample. From sigma = inf (x the unit noise) it is solved in flow time
    (`flow_solution`), where that start is finite."""
    if not 0.0 <= sigma_end < sigma_start:
        raise UserError(
            f"reference solution needs 0 <= sigma_end={sigma_end} < sigma_start={sigma_start}"
        )
    x = np.asarray(x, np.float64)
    if math.isinf(sigma_start):
        t_end = sigma_end / (1.0 + sigma_end)
        x_t, nfev = flow_solution(mixture, x, 1.0, np.array([t_end]), rtol, atol)
        return x_t[0] * (1.0 + sigma_end), nfev
    with jax.enable_x64(True):
        mix64 = as_dtype(mixture, jnp.float64)

        def rhs(sigma: float, y: np.ndarray) -> np.ndarray:
            return np.asarray(_flat_velocity(mix64, jnp.asarray(y), jnp.asarray(sigma), x.shape))

        result = solve_ivp(
            rhs, (sigma_start, sigma_end), x.reshape(-1), method="DOP853", rtol=rtol, atol=atol
        )
    if not result.success:
        raise RuntimeError(f"reference PF-ODE solve failed: {result.message}")
    return result.y[:, -1].reshape(x.shape), int(result.nfev)


def straightness(mixture: GaussianMixture, eps: np.ndarray, points: int = 200) -> dict[str, float]:
    """How far the exact PF-ODE trajectories from the unit noise `eps [B, d]` at t = 1 to the
    data bend, in two processes' coordinates: the flow's `x_t = x / (1 + sigma)` and the VP
    `z = x / sqrt(1 + sigma^2)` (both `eps` at sigma = inf, both the sample at 0). Each is
    `arc length / chord - 1` of the trajectory sampled at `points + 1` flow times (0 for a
    straight line), mean over the B samples. It does not depend on the time variable: the
    trajectories are the same curves of x, seen in the state each process's network sees."""
    times = np.linspace(1.0, 0.0, points + 1)
    x_t, _ = flow_solution(mixture, eps, 1.0, times)  # [points + 1, B, d]
    vp_scale = 1.0 / np.sqrt((1.0 - times) ** 2 + times**2)  # x_t -> z
    result = {}
    for name, path in (("flow", x_t), ("vp", x_t * vp_scale[:, None, None])):
        arc = np.linalg.norm(np.diff(path, axis=0), axis=-1).sum(axis=0)  # [B]
        chord = np.linalg.norm(path[-1] - path[0], axis=-1)  # [B]
        result[name] = float(np.mean(arc / chord - 1.0))
    return result
