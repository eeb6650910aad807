"""Linear multistep samplers in sigma space: LMS, iPNDM, DEIS, PLMS and PNDM.

All integrate the probability-flow ODE `dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma`
(Karras et al. 2022) with one denoiser call per step after their warm-up, reusing the
derivatives `d_i, d_{i-1}, ...` of earlier steps. With `m` of them, an Adams-Bashforth step is

    x_{i+1} = x_i + sum_{j < m} w_j d_{i-j},   w_j = integral_{sigma_i}^{sigma_{i+1}} l_j(u(s)) ds,

where `l_j` is the Lagrange basis polynomial of node `u(sigma_{i-j})` over the nodes
`u(sigma_i), ..., u(sigma_{i-m+1})`: the step integrates the polynomial (in `u`) through the past
derivatives exactly. The samplers differ in the variable `u` and in the nodes:

- `lms`, `ipndm`: `u = sigma` at the actual, non-uniform sigmas (variable-step Adams-Bashforth).
- `deis`: `u = log sigma` (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
  Exponential Integrator", DEIS "logrho"; in VE form their `rho` is sigma).
- `plms`, `pndm`: the fixed Adams-Bashforth coefficients `1; (3, -1) / 2; (23, -16, 5) / 12;
  (55, -59, 37, -9) / 24` times `sigma_{i+1} - sigma_i`, which are the weights above for nodes
  pretended to lie evenly at the current step size (Liu et al. 2022, "Pseudo Numerical Methods
  for Diffusion Models on Manifolds", PLMS, eq. 12 with the transfer of eq. 9).

The weights are computed inside the scan, exact up to rounding: `l_j` is expanded in powers of
`v = u - u(sigma_i)` and each power is integrated in closed form (`_power_moments`), or, for
`u = log sigma`, by a closed form or a Gauss-Legendre rule accurate to 1e-18 (`_exp_moments`)
(k-diffusion and diffusers' LMS integrate with `scipy.integrate.quad`). A method of order `p`
starts with orders 1, 2, ... as its history fills up.

PNDM's "transfer" `phi(x_t, eps, t, t')` (Liu et al. 2022, eq. 9; diffusers'
`PNDMScheduler._get_prev_sample`) is, divided by `sqrt(alpha_bar)`, exactly the Euler step
`x + (sigma' - sigma) eps` of the VE state, and `eps` is `d`. So PNDM's pseudo linear multistep
and pseudo Runge-Kutta steps are ordinary linear multistep and Runge-Kutta steps in sigma.

From `sigmas[0] = inf` (see `base`), the first step is Euler's limit `D + sigma_1 eps`. Later
steps drop the derivative at sigma = inf: with a node at `u = inf`, each other basis polynomial
tends to the one over the finite nodes and the infinite node's weight to 0 (like 1 / sigma_0 in
sigma, 1 / log sigma_0 in log sigma), so the limit is the step of one order lower. PLMS and
PNDM start with a Heun or Runge-Kutta step, which has no finite limit there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError, check_choice
from jaxdiff.samplers.base import Denoise, noise_direction, register
from jaxdiff.samplers.ode import euler_step

# The variable in which past derivatives are interpolated (module docstring).
Variable = Literal["sigma", "log_sigma", "uniform"]
# warmup(x [B, ...], d [B, ...], i [], sigma [], sigma_next []) -> x_next [B, ...]
Warmup = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

# Gauss-Legendre rule on [-1, 1] for `_exp_moments` on short intervals (|delta| <= 1), where its
# error for `v^p e^v`, p <= 3, is below 1e-18.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)
# `_exp_moments` clips `delta` here (-inf for a step into sigma = 0): beyond it `delta^p e^delta`
# is below 1e-29 for p <= 3.
_EXP_MOMENT_FLOOR = -80.0
# diffusers' `DEISMultistepScheduler` lowers the order of the final steps below this many steps.
_DEIS_LOWER_ORDER_FINAL_BELOW = 15


def _check_order(name: str, order: int, max_order: int) -> int:
    """`order` as an int, or `UserError` unless it is one of 1..max_order."""
    check_choice(f"sampler {name!r}: order", order, tuple(range(1, max_order + 1)))
    return int(order)


def _power_moments(delta: jax.Array, k: int) -> jax.Array:
    """`integral_0^delta v^p dv = delta^(p+1) / (p+1)` for p < k. [k]"""
    p = jnp.arange(k, dtype=delta.dtype)
    return delta ** (p + 1) / (p + 1)


def _exp_moments(delta: jax.Array, k: int) -> jax.Array:
    """`I_p = integral_0^delta v^p e^v dv` for p < k and `delta <= 0`, possibly -inf. [k]

    For `|delta| <= 1` by Gauss-Legendre quadrature, since the closed form
    `I_0 = e^delta - 1`, `I_p = delta^p e^delta - p I_{p-1}` cancels there (`I_p ~ delta^(p+1)`);
    beyond, by the closed form, which is then well conditioned."""
    p = jnp.arange(k, dtype=delta.dtype)
    short = jnp.clip(delta, -1.0, 0.0)
    v = 0.5 * short * (1.0 + jnp.asarray(_GL_NODES, delta.dtype))  # [q]
    quadrature = (0.5 * short * jnp.asarray(_GL_WEIGHTS, delta.dtype) * jnp.exp(v)) @ (
        v[:, None] ** p
    )
    long = jnp.clip(delta, _EXP_MOMENT_FLOOR, -1.0)
    closed = [jnp.expm1(long)]
    for q in range(1, k):
        closed.append(long**q * jnp.exp(long) - q * closed[-1])
    return jnp.where(delta > -1.0, quadrature, jnp.stack(closed))


def _lagrange_weights(nodes: jax.Array, m: jax.Array, moments: jax.Array) -> jax.Array:
    """`w_j = sum_p a_jp moments_p`, where `l_j(v) = sum_p a_jp v^p` is the Lagrange basis
    polynomial of `nodes[j]` over the first `m` nodes; `w_j = 0` for `j >= m`.
    nodes, moments: [k]; m: [] int. -> [k]"""
    k = nodes.shape[0]
    index = jnp.arange(k)
    active = index < m  # [k]
    # use[j, l]: the factor (v - nodes[l]) / (nodes[j] - nodes[l]) is part of l_j.
    use = active[:, None] & active[None, :] & (index[:, None] != index[None, :])  # [k, k]
    scale = 1.0 / jnp.where(use, nodes[:, None] - nodes[None, :], 1.0)  # [k, k]
    poly = jnp.zeros((k, k), nodes.dtype).at[:, 0].set(1.0)  # [j, p], power coefficients of l_j
    for l in range(k):
        shifted = jnp.pad(poly[:, :-1], ((0, 0), (1, 0)))  # v * l_j
        factor = (shifted - nodes[l] * poly) * scale[:, l, None]
        poly = jnp.where(use[:, l, None], factor, poly)
    return jnp.where(active, poly @ moments, 0.0)


def _ab_weights(
    variable: Variable, past: jax.Array, sigma_next: jax.Array, m: jax.Array
) -> jax.Array:
    """The weights `w_j` of the module docstring for the step from `past[0]` to `sigma_next`,
    given `past[j] = sigma_{i-j}` and the order `m`. past: [k] -> [k]"""
    k = past.shape[0]
    sigma = past[0]
    delta = sigma_next - sigma
    if variable == "log_sigma":
        # v = log(s / sigma): integral of v^p ds = sigma * I_p(log(sigma_next / sigma)).
        nodes = jnp.log(past / sigma)
        moments = sigma * _exp_moments(jnp.log(sigma_next / sigma), k)
    else:
        uniform = -delta * jnp.arange(k, dtype=delta.dtype)
        nodes = past - sigma if variable == "sigma" else uniform
        moments = _power_moments(delta, k)
    return _lagrange_weights(nodes, m, moments)


def _multistep(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    orders: jax.Array | np.ndarray,
    k: int,
    variable: Variable,
    warmup: Warmup | None = None,
    warmup_steps: int = 0,
) -> jax.Array:
    """Adams-Bashforth steps of order `orders[i] <= k` in `variable` over all intervals, in one
    scan, keeping the last k derivatives; the first `warmup_steps` steps are `warmup` steps
    instead (which still record `d_i`). x: [B, ...]; sigmas: [n + 1]; orders: [n] int."""
    n = sigmas.shape[0] - 1
    infinite_start = jnp.isinf(sigmas[0])

    def step(carry: tuple, inp: tuple) -> tuple[tuple, None]:
        x, ds = carry
        i, sigma, sigma_next, m = inp
        denoised = denoise(x, sigma)  # [B, ...]
        d = noise_direction(x, denoised, sigma)
        ds = jnp.concatenate([d[None], ds[:-1]])  # [k, B, ...], newest first
        past = sigmas[jnp.maximum(i - jnp.arange(k), 0)]  # [k]
        m = jnp.where(infinite_start, jnp.minimum(m, jnp.maximum(i, 1)), m)  # sigma_0 drops out
        w = _ab_weights(variable, past, sigma_next, m).astype(x.dtype)
        x_ab = jnp.where(
            jnp.isinf(sigma),
            euler_step(x, denoised, sigma, sigma_next),
            x + jnp.tensordot(w, ds, axes=1),
        )
        if warmup is None or warmup_steps == 0:
            return (x_ab, ds), None

        def warm() -> jax.Array:
            return warmup(x, d, i, sigma, sigma_next)

        return (jax.lax.cond(i < warmup_steps, warm, lambda: x_ab), ds), None

    ds = jnp.zeros((k, *x.shape), x.dtype)
    xs = (jnp.arange(n), sigmas[:-1], sigmas[1:], jnp.asarray(orders))
    (x, _), _ = jax.lax.scan(step, (x, ds), xs)
    return x


def _warmup_orders(order: int, n: int) -> np.ndarray:
    """`min(order, i + 1)` for step i < n: the order as the history fills up. [n]"""
    return np.minimum(order, np.arange(1, n + 1))


def _first_order_into_zero(orders: np.ndarray, sigmas: jax.Array) -> jax.Array:
    """`orders` with 1 for a step into sigma = 0, an Euler step to the denoised sample. [n]"""
    return jnp.where(sigmas[1:] > 0, orders, 1)


def _transfer_rk(
    denoise: Denoise,
    x: jax.Array,
    d: jax.Array,
    sigma: jax.Array,
    stages: tuple[jax.Array, ...],
    weights: tuple[float, ...],
) -> jax.Array:
    """An explicit Runge-Kutta step built from Euler transfers from `(x, sigma)`: stage s is
    evaluated at `x + (stages[s] - sigma) d_s` and level `stages[s]`, with `d_0 = d`; the step
    goes to `stages[-1]` with `sum_s weights[s] d_s` (Liu et al. 2022, eq. 13 for PRK).
    One denoiser call per stage; x, d: [B, ...]."""
    ds = [d]
    for level in stages:
        x_stage = x + (level - sigma) * ds[-1]
        ds.append((x_stage - denoise(x_stage, level)) / level)
    return x + (stages[-1] - sigma) * sum(w * dk for w, dk in zip(weights, ds, strict=True))


@register("lms", starts_at_infinity=True)
def lms(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    order: int = 4,
) -> jax.Array:
    """Linear multistep (variable-step Adams-Bashforth in sigma), k-diffusion `sample_lms`:
    the Lagrange polynomial through the last `order` derivatives at the actual sigmas is
    integrated over each step, exactly (module docstring). Matches diffusers'
    `LMSDiscreteScheduler`. Steps use orders 1, 2, ... up to `order` (1 to 4) as the history
    fills; the step into sigma = 0 keeps the full order, as both do. On grids whose last step
    into 0 is much longer than the ones before (Karras with hundreds of steps) that step
    extrapolates far and amplifies float32 rounding; `ipndm` ends with an Euler step instead.
    Deterministic; `key` is unused.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step."""
    order = _check_order("lms", order, 4)
    orders = _warmup_orders(order, sigmas.shape[0] - 1)
    return _multistep(denoise, x, sigmas, orders, order, "sigma")


@register("ipndm", starts_at_infinity=True)
def ipndm(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    order: int = 4,
) -> jax.Array:
    """Improved PNDM (Zhang & Chen 2023, iPNDM: PNDM's linear multistep with lower-order
    multistep warm-up instead of Runge-Kutta steps) with Adams-Bashforth coefficients for
    non-uniform steps, the intent of k-diffusion's `sample_ipndm_v`: on equal steps it is
    `sample_ipndm` (fixed coefficients 1; (3, -1)/2; (23, -16, 5)/12; (55, -59, 37, -9)/24).
    `sample_ipndm_v`'s closed-form coefficients are exact only up to order 2: at order 3 they
    integrate quadratics wrongly on uneven steps, and at order 4 they differ from (55, -59, 37,
    -9)/24 even on equal steps; here they are exact for every order. As `sample_ipndm`, the step
    into sigma = 0 returns the denoised sample (an Euler step); otherwise the same steps as `lms`.
    `order` 1 to 4. Deterministic; `key` is unused.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step."""
    order = _check_order("ipndm", order, 4)
    orders = _warmup_orders(order, sigmas.shape[0] - 1)
    orders = _first_order_into_zero(orders, sigmas)
    return _multistep(denoise, x, sigmas, orders, order, "sigma")


@register("deis", starts_at_infinity=True)
def deis(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    order: int = 2,
    lower_order_final: bool = True,
) -> jax.Array:
    """DEIS multistep, "logrho" (Zhang & Chen 2023; diffusers' `DEISMultistepScheduler` with
    algorithm_type "deis", solver_type "logrho"): the past derivatives (eps) are interpolated by
    a polynomial in log sigma and integrated over sigma, exactly (module docstring). Order 1 is
    DDIM. `order` 1 to 3, reached after a warm-up of lower orders; with `lower_order_final` and
    fewer than 15 steps, as diffusers, the last step is first order and the one before at most
    second order. A step into sigma = 0 is always first order (the denoised sample), as
    diffusers' `DPMSolverMultistepScheduler` does with final_sigmas_type "zero": a polynomial in
    log sigma would be extrapolated to log sigma = -inf there, with weights growing as
    `1 / h^(order - 1)` for log-sigma steps h (diffusers' DEIS itself never steps into 0).
    Deterministic; `key` is unused.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step."""
    order = _check_order("deis", order, 3)
    n = sigmas.shape[0] - 1
    orders = _warmup_orders(order, n)
    if lower_order_final and n < _DEIS_LOWER_ORDER_FINAL_BELOW:
        orders = np.minimum(orders, np.arange(n, 0, -1))
    orders = _first_order_into_zero(orders, sigmas)
    return _multistep(denoise, x, sigmas, orders, order, "log_sigma")


@register("plms")
def plms(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """Pseudo linear multistep (Liu et al. 2022, PLMS) as diffusers' `PNDMScheduler` with
    skip_prk_steps=True runs it (Stable Diffusion's setting): fixed Adams-Bashforth coefficients
    of order 2, 3, then 4 times each step `sigma_{i+1} - sigma_i`, after a first step that is a
    Heun step (two denoiser calls; diffusers' `counter == 1` branch, which averages the eps at
    both ends). With a single step, one Euler step. Deterministic; `key` is unused.
    x: [B, ...]; sigmas: [n + 1] descending. One denoiser call per step, two in the first step
    (n + 1 calls for n >= 2)."""
    n = sigmas.shape[0] - 1

    def heun(
        x: jax.Array, d: jax.Array, i: jax.Array, sigma: jax.Array, sigma_next: jax.Array
    ) -> jax.Array:
        return _transfer_rk(denoise, x, d, sigma, (sigma_next,), (0.5, 0.5))

    return _multistep(denoise, x, sigmas, _warmup_orders(4, n), 4, "uniform", heun, min(1, n - 1))


@register("pndm", evals_per_step=4)
def pndm(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    mid_sigmas: jax.Array | None = None,
) -> jax.Array:
    """Pseudo numerical method (Liu et al. 2022, PNDM) as diffusers' `PNDMScheduler` with
    skip_prk_steps=False: three pseudo Runge-Kutta (PRK) steps, then PLMS steps with the fixed
    fourth-order Adams-Bashforth coefficients. A PRK step from sigma to sigma_next is built from
    Euler transfers with the classical RK4 tableau (`_transfer_rk`, Liu et al. 2022, eq. 13):
    two stages at a midpoint sigma, one at sigma_next, weights (1, 2, 2, 1) / 6.

    diffusers puts the midpoint at timestep `t - step / 2`, whose sigma depends on the noise
    schedule, not only on the sigmas of the grid. `mid_sigmas` [n] gives the midpoint sigma of
    each interval (only those of PRK steps are used); the sigmas of diffusers' half-step
    timesteps reproduce it. By default the midpoint is the geometric mean
    `sqrt(sigma_i sigma_{i+1})` (the midpoint in log sigma, as k-diffusion's DPM-2), which is
    close to the timestep midpoint of Stable Diffusion's schedule.

    The last interval is always a multistep step (it may end at sigma = 0, where no stage can be
    evaluated), so PRK covers the first `min(3, n - 1)` intervals. diffusers needs n >= 4 (it
    stops early otherwise). Deterministic; `key` is unused.
    x: [B, ...]; sigmas: [n + 1] descending. Four denoiser calls per PRK step, one per PLMS step:
    n + 3 min(3, n - 1) calls (n + 9 for n >= 4)."""
    n = sigmas.shape[0] - 1
    if mid_sigmas is None:
        mid_sigmas = jnp.sqrt(sigmas[:-1] * sigmas[1:])
    mid_sigmas = jnp.asarray(mid_sigmas, sigmas.dtype)
    if mid_sigmas.shape != (n,):
        raise UserError(
            f"sampler 'pndm': mid_sigmas must have shape ({n},), one per interval; "
            f"got {mid_sigmas.shape}"
        )

    def prk(
        x: jax.Array, d: jax.Array, i: jax.Array, sigma: jax.Array, sigma_next: jax.Array
    ) -> jax.Array:
        mid = mid_sigmas[i]
        stages = (mid, mid, sigma_next)
        return _transfer_rk(denoise, x, d, sigma, stages, (1 / 6, 1 / 3, 1 / 3, 1 / 6))

    return _multistep(denoise, x, sigmas, _warmup_orders(4, n), 4, "uniform", prk, min(3, n - 1))
