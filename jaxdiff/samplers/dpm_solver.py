"""Deterministic DPM-Solver and DPM-Solver++ samplers, in sigma space.

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps" (arXiv 2206.00927), and Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models" (arXiv 2211.01095). They are exponential integrators in
`lambda = -log sigma`; over a step `h = lambda_next - lambda` the first-order DPM-Solver++ step is
`x_next = e^{-h} x + (1 - e^{-h}) D(x, sigma)`, i.e. DDIM / Euler in the VE form
`x = x0 + sigma * eps`. diffusers' VP formulas map onto these exactly (`x = z / alpha`,
`sigma = sigma_vp / alpha`). Higher orders add `c_1 D_1 - phi_3 D_2`, finite differences of the
denoised values in lambda, with `phi_1 = 1 - e^{-h}`, `phi_2 = 1 - phi_1 / h` and
`phi_3 = phi_2 / h - 1/2`.

A step into sigma = 0 (lambda = inf) is the first-order limit `x_next = D(x, sigma)`: the
higher-order terms are undefined there (diffusers' `final_sigmas_type="zero"`, k-diffusion's
"denoising step"). Its logs are taken on a stand-in positive sigma, so no NaN is ever formed.

Multistep (`dpmpp_2m`, `dpmpp_3m` and the SDE variants in `dpm_solver_sde`): one denoiser call
per step, reusing the denoised values of the previous steps; the first steps warm up with lower
orders. With `lower_order_final` and fewer than 15 steps the last step is first order and the one
before at most second order (diffusers' `DPMSolverMultistepScheduler` default; k-diffusion never
lowers them). `solver_type` "midpoint" or "heun" picks the second-order coefficient
`c_1 = phi_1 / 2` or `phi_2` (`DPMSolverMultistepScheduler`'s `solver_type`; it also applies to
the second-order warm-up step of 3M, where k-diffusion's `sample_dpmpp_3m_sde` takes `phi_2`).

The samplers with k-diffusion's names (`dpmpp_2m`, `dpmpp_2m_sde`, `dpmpp_3m_sde`) default to
k-diffusion's settings; `dpmpp_3m`, which k-diffusion lacks, to diffusers'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError, check_choice
from jaxdiff.samplers.base import Denoise, register
from jaxdiff.samplers.noise import NoiseSource

SOLVER_TYPES = ("midpoint", "heun")
# diffusers lowers the order of the last steps (`lower_order_final`) below this many steps.
FEW_STEPS = 15


def positive_or_half(sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
    """`sigma_next`, or `sigma / 2` in its place when it is 0, so that logs stay finite. A step
    into 0 returns the denoised value instead of anything computed from this stand-in."""
    return jnp.where(sigma_next > 0, sigma_next, 0.5 * sigma)


def _exp_step(
    decayed: jax.Array,
    d0: jax.Array,
    h: jax.Array,
    d1: jax.Array | float = 0.0,
    d2: jax.Array | float = 0.0,
    midpoint: bool = False,
) -> jax.Array:
    """DPM-Solver++ update over `h` from `decayed = e^{-h} x` [B, ...]:
    `e^{-h} x + phi_1 d0 + c d1 - phi_3 d2`, `c = phi_1 / 2` ("midpoint") or `phi_2` ("heun" and
    third order). At h = inf (a step from sigma = inf) the phis are their limits 1, 1, -1/2."""
    phi1 = -jnp.expm1(-h)
    phi2 = 1.0 - phi1 / h
    phi3 = phi2 / h - 0.5
    c1 = 0.5 * phi1 if midpoint else phi2
    return decayed + phi1 * d0 + c1 * d1 - phi3 * d2


def decay(
    x: jax.Array, sigma: jax.Array, sigma_next: jax.Array, h: jax.Array, eta: float = 0.0
) -> jax.Array:
    """`e^{-(1 + eta) h} x` for `h = log(sigma / sigma_next)`, the share of the state that a
    (stochastic, `eta`) DPM-Solver++ step keeps. At sigma = inf, where the state is the unit
    noise `x / sigma`, its limit: `sigma_next * x` for eta = 0, else 0. [B, ...]"""
    at_infinity = sigma_next * x if eta == 0 else jnp.zeros_like(x)
    return jnp.where(jnp.isinf(sigma), at_infinity, jnp.exp(-(1.0 + eta) * h) * x)


# ---------------------------------------------------------------------------------------------
# Multistep DPM-Solver++ (2M, 3M)


def _multistep_orders(n: int, order: int, lower_order_final: bool) -> np.ndarray:
    """Order of each of `n` steps: warm-up `min(order, i + 1)`; with `lower_order_final` and
    n < 15, at most 2 in the second-to-last step and 1 in the last
    (`DPMSolverMultistepScheduler.step`). [n]"""
    orders = np.minimum(np.arange(1, n + 1), order)
    if lower_order_final and n < FEW_STEPS:
        orders[-1] = 1
        orders[-2:-1] = np.minimum(orders[-2:-1], 2)
    return orders


def dpmpp_multistep(
    name: str,
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    *,
    order: int,
    solver_type: str,
    lower_order_final: bool,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_fn: NoiseSource | None = None,
    d2_weight: float = 1.0,
) -> jax.Array:
    """DPM-Solver++(2M/3M) (see "Multistep" in the module docstring; `d2_weight` scales the
    third-order term, see `dpmpp_3m`) and, with `noise_fn`, its
    SDE variant (k-diffusion `sample_dpmpp_2m_sde` / `sample_dpmpp_3m_sde`): over a step the
    exponential integrator runs with `(1 + eta) h` and adds noise of standard deviation
    `s_noise * sigma_next * sqrt(1 - e^{-2 eta h})`. x: [B, ...]; sigmas: [n + 1]."""
    check_choice(f"sampler {name!r}: solver_type", solver_type, SOLVER_TYPES)
    orders = _multistep_orders(sigmas.shape[0] - 1, order, lower_order_final)
    midpoint = solver_type == "midpoint"

    def step(carry: tuple, inp: tuple) -> tuple[tuple, None]:
        # Denoised values [B, ...] and lambda steps [] of the previous two steps.
        x, d_1, d_2, h_1, h_2 = carry
        sigma, sigma_next, k = inp
        d = denoise(x, sigma)  # [B, ...]
        h = jnp.log(sigma / positive_or_half(sigma, sigma_next))
        h_eta = (1.0 + eta) * h
        decayed = decay(x, sigma, sigma_next, h, eta)
        # After a step from sigma = inf, h_1 or h_2 is inf: r = inf gives that step's
        # differences weight 0, the limit of these steps.
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (d - d_1) / r0
        d1_1 = (d_1 - d_2) / r1

        def third() -> jax.Array:
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = d2_weight * (d1_0 - d1_1) / (r0 + r1)
            return _exp_step(decayed, d, h_eta, d1, d2)

        x_next = jax.lax.switch(
            k - 1,
            [
                lambda: _exp_step(decayed, d, h_eta),
                lambda: _exp_step(decayed, d, h_eta, d1_0, midpoint=midpoint),
                third,
            ],
        )
        if noise_fn is not None:
            std = s_noise * sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * eta * h))
            x_next = x_next + std * noise_fn(sigma, sigma_next)
        x_next = jnp.where(sigma_next > 0, x_next, d)
        return (x_next, d, d_1, h, h_1), None

    zeros = jnp.zeros_like(x)
    one = jnp.ones((), x.dtype)  # a finite stand-in for the missing steps of the warm-up
    (x, *_), _ = jax.lax.scan(
        step, (x, zeros, zeros, one, one), (sigmas[:-1], sigmas[1:], jnp.asarray(orders))
    )
    return x


@register("dpmpp_2m", starts_at_infinity=True)
def dpmpp_2m(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    solver_type: str = "midpoint",
    lower_order_final: bool = False,
) -> jax.Array:
    """DPM-Solver++(2M): Lu et al. 2022 (DPM-Solver++), Algorithm 2. By default k-diffusion's
    `sample_dpmpp_2m`; `lower_order_final=True` is diffusers'
    `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`, whose last step
    is first order below 15 steps. The two differ only on schedules that end above sigma = 0
    (a step into 0 is first order in both). One denoiser call per step; see "Multistep" in the
    module docstring. x: [B, ...]; sigmas: [n + 1]."""
    return dpmpp_multistep(
        "dpmpp_2m",
        denoise,
        x,
        sigmas,
        order=2,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
    )


@register("dpmpp_3m", starts_at_infinity=True)
def dpmpp_3m(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    exact_d2: bool = False,
) -> jax.Array:
    """DPM-Solver++(3M): diffusers `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=3)`, with its defaults. With `solver_type="heun", lower_order_final=False` it
    is the `eta = 0` limit of k-diffusion `sample_dpmpp_3m_sde` (jaxdiff's `dpmpp_3m_sde`
    defaults). One denoiser call per step; see "Multistep" in the module docstring.
    x: [B, ...]; sigmas: [n + 1].

    As in those implementations (and Lu et al.'s reference code), the second difference
    `D_2 = (D1_0 - D1_1) / (r0 + r1)` estimates `h^2 D'' / 2` but takes the weight `phi_3` whose
    Taylor partner is `h^2 D''`, so the method converges at second order as the steps grow, with
    a smaller error than 2M. `exact_d2=True` doubles that term, which makes it the third-order
    exponential Adams-Bashforth step (measured order 3 on smooth problems).
    """
    return dpmpp_multistep(
        "dpmpp_3m",
        denoise,
        x,
        sigmas,
        order=3,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        d2_weight=2.0 if exact_d2 else 1.0,
    )


# ---------------------------------------------------------------------------------------------
# Singlestep DPM-Solver++ on the grid points (DPMSolverSinglestepScheduler)


def _singlestep_orders(n: int, order: int, lower_order_final: bool) -> np.ndarray:
    """`DPMSolverSinglestepScheduler.get_order_list`: steps grouped as `1, 2, ..., order`, with a
    shorter group at the end. Without `lower_order_final`, n must be a multiple of the order
    (diffusers switches `lower_order_final` on otherwise, and so does this). [n]"""
    if not lower_order_final and n % order == 0:
        return np.tile(np.arange(1, order + 1), n // order)
    groups = [np.arange(1, order + 1)] * (n // order)
    tail = n % order
    if order > 1 and tail == 0:  # diffusers ends with `1, ..., order - 1` and a first-order step
        groups[-1:] = [np.arange(1, order), np.ones(1, int)]
    elif tail:
        groups.append(np.arange(1, tail + 1))
    return np.concatenate(groups)


@register("dpm_solver", starts_at_infinity=True)
def dpm_solver(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    order: int = 2,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
) -> jax.Array:
    """Singlestep DPM-Solver++ (Lu et al. 2022, DPM-Solver++ Algorithm 1 and DPM-Solver's
    singlestep DPM-Solver-3) with its intermediate points on the grid: diffusers
    `DPMSolverSinglestepScheduler(algorithm_type="dpmsolver++")`.

    The steps form groups of orders `1, 2, ..., order` (`_singlestep_orders`); the k-th step of
    a group goes from the group's first point to the next grid point with the denoised values
    of the group's k points, so each step makes one denoiser call. A schedule ending in 0 takes
    `lower_order_final` grouping (as diffusers) and a first-order last step. `solver_type`
    picks the second-order coefficient and, for order 3, "midpoint" uses only the last
    difference (DPM-Solver-3) while "heun" uses both (a Taylor expansion to second order).
    From `sigmas[0] = inf` the first group's steps take their limits, which need only D at
    t = 1: its ratios `r` tend to 1, and the "heun" third-order step is expanded in `1 / h`.
    x: [B, ...]; sigmas: [n + 1].
    """
    check_choice("sampler 'dpm_solver': order", order, (1, 2, 3))
    check_choice("sampler 'dpm_solver': solver_type", solver_type, SOLVER_TYPES)
    midpoint = solver_type == "midpoint"
    n = sigmas.shape[0] - 1
    orders = jnp.where(
        sigmas[-1] > 0,
        _singlestep_orders(n, order, lower_order_final),
        _singlestep_orders(n, order, True),
    )

    def step(carry: tuple, inp: tuple) -> tuple[tuple, None]:
        # The group's first point: state, lambda and denoised value; its second point's lambda
        # and denoised value.
        x, x0, lam0, d0, lam1, d_1 = carry
        sigma, sigma_next, k = inp
        d = denoise(x, sigma)  # [B, ...]
        lam = -jnp.log(sigma)
        start = k == 1
        x0, lam0, d0 = jnp.where(start, x, x0), jnp.where(start, lam, lam0), jnp.where(start, d, d0)
        to = positive_or_half(sigma, sigma_next)
        h = -jnp.log(to) - lam0

        def ratio(lam_k: jax.Array) -> jax.Array:
            """`(lam_k - lam0) / h`, which tends to 1 as the group's start goes to sigma = inf."""
            return jnp.where(jnp.isinf(lam0), 1.0, (lam_k - lam0) / h)

        r0 = ratio(lam)  # 0 on the first step of a group, where it is not used

        def third() -> jax.Array:
            r1 = ratio(lam1)
            d1_0, d1_1 = (d_1 - d0) / r1, (d - d0) / r0
            if midpoint:
                return _exp_step(decayed, d0, h, d1_1)
            d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
            finite = _exp_step(decayed, d0, h, d1, 2.0 * (d1_1 - d1_0) / (r0 - r1))
            # From sigma = inf, r0 - r1 -> 0 and terms growing like h cancel; expanded in 1 / h
            # with lam0 -> -inf, the step tends to this (lam_next: the step's end).
            lam_next = -jnp.log(to)
            spread = (d - d0) * (lam_next - lam) - (d_1 - d0) * (lam_next - lam1) - (d - d_1)
            limit = decayed + d_1 + d - d0 + spread / (lam - lam1)
            return jnp.where(jnp.isinf(lam0), limit, finite)

        decayed = decay(x0, jnp.exp(-lam0), to, h)
        x_next = jax.lax.switch(
            k - 1,
            [
                lambda: _exp_step(decayed, d0, h),
                lambda: _exp_step(decayed, d0, h, (d - d0) / r0, midpoint=midpoint),
                third,
            ],
        )
        second = k == 2
        lam1, d_1 = jnp.where(second, lam, lam1), jnp.where(second, d, d_1)
        return (jnp.where(sigma_next > 0, x_next, d), x0, lam0, d0, lam1, d_1), None

    zero = jnp.zeros((), x.dtype)
    carry = (x, x, zero, jnp.zeros_like(x), zero, jnp.zeros_like(x))
    (x, *_), _ = jax.lax.scan(step, carry, (sigmas[:-1], sigmas[1:], orders))
    return x


# ---------------------------------------------------------------------------------------------
# Adaptive step size (DPM-Solver-12 / 23)


def _dpm_solver_pair(
    denoise: Denoise, x: jax.Array, s: jax.Array, t: jax.Array, order: int
) -> tuple[jax.Array, jax.Array]:
    """The lower- and higher-order DPM-Solver (noise prediction) steps from lambda s to t that
    share their denoiser calls: DPM-Solver-1 and -2 (r1 = 1/2) for order 2, DPM-Solver-2
    (r1 = 1/3) and -3 (r1 = 1/3, r2 = 2/3) for order 3 (Lu et al. 2022, DPM-Solver, Algorithms
    1 and 2; k-diffusion `DPMSolver.dpm_solver_{1,2,3}_step`). `order` denoiser calls."""

    def eps(x: jax.Array, lam: jax.Array) -> jax.Array:
        sigma = jnp.exp(-lam)
        return (x - denoise(x, sigma)) / sigma

    def sigma_expm1(r: float) -> tuple[jax.Array, jax.Array]:
        """`(sigma(s + r h), e^{r h} - 1)`."""
        return jnp.exp(-(s + r * h)), jnp.expm1(r * h)

    h = t - s
    e0 = eps(x, s)  # [B, ...]
    sigma_t, em1 = sigma_expm1(1.0)
    x1 = x - sigma_t * em1 * e0
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    sigma_1, em1_1 = sigma_expm1(r1)
    e1 = eps(x - sigma_1 * em1_1 * e0, s + r1 * h)
    x2 = x1 - sigma_t / (2.0 * r1) * em1 * (e1 - e0)
    if order == 2:
        return x1, x2
    r2 = 2.0 / 3.0
    sigma_2, em1_2 = sigma_expm1(r2)
    u2 = x - sigma_2 * em1_2 * e0 - sigma_2 * (r2 / r1) * (em1_2 / (r2 * h) - 1.0) * (e1 - e0)
    e2 = eps(u2, s + r2 * h)
    return x2, x1 - sigma_t / r2 * (em1 / h - 1.0) * (e2 - e0)


@register("dpm_adaptive", evals_per_step=3)
def dpm_adaptive(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    max_steps: int = 1000,
) -> jax.Array:
    """DPM-Solver-23 (order 3) or -12 (order 2) with adaptive step size: Lu et al. 2022
    (DPM-Solver), Algorithm 4; k-diffusion `sample_dpm_adaptive` (deterministic, eta = 0).

    Integrates in lambda from `sigmas[0]` to the smallest positive sigma in `sigmas` (only the
    end points are used; k-diffusion needs sigma_min > 0), then, if `sigmas` ends in 0, takes
    one last denoising step `x = D(x, sigma_min)`. Each attempted step computes a lower- and a
    higher-order solution (`order` denoiser calls), measures
    `err = rms((x_low - x_high) / max(atol, rtol * max(|x_low|, |x_prev|)))` over the whole
    batch, and a PID controller on `1 / err` (k-diffusion `PIDStepSizeController`: step
    factor `1 + atan(prod err_j^{-b_j} - 1)`, `b = ((p + i + d), -(p + 2 d), d) / order`)
    scales the step and accepts it when the factor is at least `accept_safety`. The loop is a
    `lax.while_loop`, so the number of denoiser calls depends on the data; it stops after
    `max_steps` attempted steps (or on a non-finite step size), wherever it has got to.
    x: [B, ...]; sigmas: [n + 1].
    """
    check_choice("sampler 'dpm_adaptive': order", order, (2, 3))
    if rtol < 0 or atol < 0 or rtol + atol == 0:
        raise UserError(
            f"sampler 'dpm_adaptive': rtol={rtol} and atol={atol} must be >= 0, not both 0"
        )
    if not h_init > 0:
        raise UserError(f"sampler 'dpm_adaptive': h_init={h_init} must be > 0")
    if max_steps < 1:
        raise UserError(f"sampler 'dpm_adaptive': max_steps={max_steps} must be >= 1")
    dtype = x.dtype
    sigma_end = jnp.where(sigmas[-1] > 0, sigmas[-1], sigmas[-2])
    t_end = -jnp.log(sigma_end)
    b = jnp.asarray([pcoeff + icoeff + dcoeff, -(pcoeff + 2.0 * dcoeff), dcoeff], dtype) / order

    def keep_going(carry: tuple) -> jax.Array:
        s, h, *_, steps = carry
        return (s < t_end - 1e-5) & (steps < max_steps) & jnp.isfinite(h)

    def attempt(carry: tuple) -> tuple:
        # lambda reached, step size, state [B, ...], last accepted low-order state [B, ...],
        # inverse errors [3] (current, last two accepted), attempted steps.
        s, h, x, x_prev, inv_errs, steps = carry
        t = jnp.minimum(t_end, s + h)
        x_low, x_high = _dpm_solver_pair(denoise, x, s, t, order)
        delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_low), jnp.abs(x_prev)))
        error = jnp.sqrt(jnp.mean(((x_low - x_high) / delta) ** 2))
        inv = 1.0 / (error + 1e-8)
        inv_errs = jnp.where(steps == 0, inv, inv_errs).at[0].set(inv)
        factor = 1.0 + jnp.arctan(jnp.prod(inv_errs**b) - 1.0)
        accept = factor >= accept_safety
        inv_errs = jnp.where(accept, inv_errs[jnp.array([0, 0, 1])], inv_errs)
        return (
            jnp.where(accept, t, s),
            h * factor,
            jnp.where(accept, x_high, x),
            jnp.where(accept, x_low, x_prev),
            inv_errs,
            steps + 1,
        )

    start = (-jnp.log(sigmas[0]), jnp.asarray(h_init, dtype), x, x, jnp.ones(3, dtype), 0)
    _, _, x, *_ = jax.lax.while_loop(keep_going, attempt, start)
    return jax.lax.cond(sigmas[-1] > 0, lambda: x, lambda: denoise(x, sigma_end))
