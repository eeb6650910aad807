"""Negative log-likelihood (nats, bits/dim) through the probability-flow ODE.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
Section 4.3 and Appendix D.2, in the VE / denoiser form of Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", eq. 3 (`sigma(t) = t`).

**The ODE.** With the denoiser `D(x, sigma) -> x0_hat` of `x = x0 + sigma * eps`, the
probability-flow ODE is `dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma`. It maps the
noised data density `p_sigma` onto itself for every sigma, and along a trajectory the instantaneous
change of variables (Chen et al. 2018, "Neural Ordinary Differential Equations", Theorem 1) gives
`d log p_sigma(x(sigma)) / dsigma = -div_x f(x(sigma), sigma)`. Integrating from the data end
`sigma_min` up to `sigma_max`:

    log p_{sigma_min}(x) = log p_{sigma_max}(x(sigma_max))
                           + int_{sigma_min}^{sigma_max} div_x f(x(sigma), sigma) dsigma.

The integral runs in `t = log sigma`, where the ODE is smooth over the whole range and the
division by sigma disappears: `dx/dt = g(x, t) = x - D(x, e^t)` and the log-density integrand is
`div_x g = D_dim - tr(dD/dx)` (`= sigma * div_x f`, and `dsigma = sigma dt`).

**The prior.** `p_{sigma_max}` is replaced by `N(0, sigma_max^2 I)`, score_sde's `VESDE.prior_logp`
and the standard choice for VE / EDM processes. It is the exact noised density only in the limit
`sigma_max >> data scale`: for data of mean `mu` and variance `v` per coordinate, the error per
dimension is of order `|mu| / sigma_max + v / sigma_max^2` nats. A prior `N(0, (sigma_data^2 +
sigma_max^2) I)` would be exact only for zero-mean Gaussian data of variance `sigma_data^2`, so it
is not used. The returned `Likelihood` carries `x_end` and `delta_logp`, so a caller can put a
different prior on the same solve.

**What is measured.** The density is that of `x0 + sigma_min * eps` (data convolved with a
Gaussian of standard deviation `sigma_min`), the data end of the ODE; it tends to the data
density as `sigma_min -> 0`. For VP processes the state is the VE-form `x = z / alpha` (the
denoiser contract), which differs from the VP `z` by the factor `sqrt(1 + sigma_min^2)`.

**Settings.** The ends `sigma_min`, `sigma_max`, the divergence and the solver below are the
fields of one `ODESettings`, the `ode` argument of `nll` and `bits_per_dim`.

**Divergence.** `"exact"`: the trace of the Jacobian, one linearization and `D_dim` tangent
evaluations (vmapped) per function evaluation; for small `D_dim`. `"hutchinson"`: the
Skilling-Hutchinson estimate `e^T (dg/dx) e` from one `jax.jvp`, with a Rademacher (default) or
Gaussian probe `e` drawn once per example and kept over the whole solve (as score_sde's
`get_likelihood_fn`), which makes the estimate of the integral unbiased: `E_e[e^T M e] = tr M`
for `M = int dg/dx dt`. Its variance is `2 * sum_{i != j} M_ij^2` for Rademacher probes and
`2 * ||M||_F^2` for Gaussian ones (zero for a diagonal Jacobian with Rademacher probes).

**Solvers.** `"rk4"`: classical fourth-order Runge-Kutta in `log sigma` with `steps` equal steps
(`jax.lax.scan`, `4 * steps` function evaluations). `"dopri5"`: adaptive Dormand-Prince 5(4)
with FSAL and error control on the joint state (x and the log-density integral), one step size
for the whole batch (the hardest example sets it) in a `jax.lax.while_loop`; score_sde uses
RK45 with `rtol = atol = 1e-5`. Measured in float32 on analytic Gaussian mixtures (d = 8;
`tests/evaluation/test_likelihood.py`), against the closed-form noised log density with the
exact prior substituted, the worst-case error in bits/dim over 512 points of a two-component
mixture with sigma in [1e-3, 1e3] is, for rk4 with 32 / 64 / 100 / 128 / 256 steps, 4.7e-2 /
2.8e-3 / 5.6e-4 / 1.6e-4 / 7.7e-6 (the `steps^-4` of a fourth-order method), and 1.6e-4 for
dopri5 at 1e-5 (about 220 evaluations); the mean error is 10 to 50 times smaller. Over sigma in
[0.002, 80] with eight components of standard deviation 0.1 to 0.25, rk4 with 100 steps (the
default) gives 1.2e-4. With the `N(0, sigma_max^2 I)` prior the prior mismatch adds up to 8e-3
bits/dim at sigma_max = 80 for data of scale 1, and about 2e-3 at sigma_max = 1e3.

**Random keys.** `key` is one key (`jax.random.key`) or a key array `[B]`, one key per example.
From one key, example b draws from `fold_in(k, b)` of keys `k` derived from it: its draws do not
depend on the batch size, but do on its position in the batch. From per-example keys, example
b's Hutchinson probe and each of its dequantization draws come from `keys[b]` alone, so with
`"rk4"` (fixed steps) and a denoiser that treats examples independently, an example's result
does not depend on the batch it is in or its position in it (to float rounding): a data set may
be split into batches in any order. `"dopri5"` takes one step size for the whole batch, so its
results depend on the rest of the batch with either kind of key.

**Dequantized 8-bit data.** For images `k` in `{0, ..., 255}^D` (Uria et al. 2013; Theis et al.
2016; Ho et al. 2020 and Song et al. 2021 report this), `bits_per_dim` draws `u ~ U[0, 1)^D` and
maps `z = k + u` in `[0, 256)` to the model's scale `x = lo + (hi - lo) * z / 256` for
`data_range = (lo, hi)`. The discrete probability `P(k) = int_{[k, k+1)} p_z(z) dz` is bounded
by Jensen's inequality, `-log P(k) <= E_u[-log p_z(k + u)]`, and the density on the 256-level
scale is `p_z(z) = p_x(x) * ((hi - lo) / 256)^D`, so

    bits/dim = (-log p_x(x) - D * log((hi - lo) / 256)) / (D ln 2)
             = NLL_x / (D ln 2) + 8 - log2(hi - lo)

(the offset `7 - inverse_scaler(-1)` in score_sde's `likelihood.py`, explained in
score_sde_pytorch issue #51: `+ 7` for data in `[-1, 1]`, `+ 8` for `[0, 1]`). Note that
`x = lo + (hi - lo) * (k + u) / 256` puts `k` at the left of its bin, as score_sde's
`(k / 255 * 255 + u) / 256`; a model trained on `lo + (hi - lo) * k / 255` sees the same grid to
within one part in 256.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError, check_choice
from jaxdiff.item_keys import item_keys

# denoise(x [B, ...], sigma []) -> x0_hat [B, ...]
Denoise = Callable[[jax.Array, jax.Array], jax.Array]
# The augmented ODE in t = log sigma: (t [], x [B, ...]) -> (dx/dt [B, ...], div [B]).
_Rhs = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")
SOLVERS: tuple[str, ...] = ("rk4", "dopri5")


class Likelihood(NamedTuple):
    """Result of `nll`; per-example fields have a leading batch axis [B]."""

    nats: jax.Array  # [B] -log p_{sigma_min}(x), nats per example
    bits_per_dim: jax.Array  # [B] nats / (D ln 2)
    prior_logp: jax.Array  # [B] log N(x_end; 0, sigma_max^2 I)
    delta_logp: jax.Array  # [B] int div_x g dt = log p_{sigma_min}(x) - log p_{sigma_max}(x_end)
    x_end: jax.Array  # [B, ...] the ODE solution at sigma_max
    nfe: jax.Array  # [] evaluations of the augmented ODE (denoiser linearizations)


class DiscreteLikelihood(NamedTuple):
    """Result of `bits_per_dim` on 8-bit data."""

    nats: jax.Array  # [B] E_u[-log p_z(k + u)] >= -log P(k), nats per example (256-level scale)
    bits_per_dim: jax.Array  # [B] nats / (D ln 2)
    continuous: Likelihood  # each field of `nll` in the model's scale, stacked [S, B, ...]


# ---------------------------------------------------------------------------------------------
# Checks


def _check_sigmas(sigma_min: object, sigma_max: object) -> tuple[float, float]:
    """Python floats `0 < sigma_min < sigma_max < inf`, else a UserError."""
    try:
        lo, hi = float(sigma_min), float(sigma_max)  # type: ignore[arg-type]
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise UserError(
            f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r} must be concrete numbers"
        ) from None
    if not (0.0 < lo < hi < math.inf):
        raise UserError(
            f"sigma_min={lo}, sigma_max={hi} must satisfy 0 < sigma_min < sigma_max < inf"
        )
    return lo, hi


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UserError(f"{name}={value!r} must be a positive integer")


def _check_tolerance(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserError(f"{name}={value!r} must be a number > 0")


def _check_ode(ode: object) -> None:
    if not isinstance(ode, ODESettings):
        raise UserError(f"ode={ode!r} is not supported; accepted: an ODESettings")


def _check_key(key: object, batch: int) -> jax.Array:
    """A typed key `[]` or one per example `[B]` (raw uint32 key data is wrapped), else a
    UserError."""
    try:
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # type: ignore[attr-defined]
            key = jax.random.wrap_key_data(key)
    except (AttributeError, TypeError):
        raise UserError(
            f"key of type {type(key).__name__}, dtype {getattr(key, 'dtype', None)} and shape "
            f"{getattr(key, 'shape', None)} is not supported; accepted: jax.random.key(seed), "
            "or one such key per example"
        ) from None
    if key.shape not in ((), (batch,)):
        raise UserError(
            f"key has shape {key.shape}; accepted: one key, shape (), or one per example, "
            f"shape ({batch},)"
        )
    return key


# ---------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class ODESettings:
    """How `nll` and `bits_per_dim` solve the PF-ODE (module docstring), checked on construction.

    Frozen and hashable, so it can be a static argument of `jax.jit`. `sigma_min < sigma_max`
    are the data and prior ends of the ODE (stored as Python floats). `divergence` is "exact" or
    "hutchinson" (then the probe is `probe`, "rademacher" or "gaussian"); `solver` is "rk4"
    (`steps` equal steps) or "dopri5" (`rtol`, `atol`, at most `max_steps` attempted steps, NaN
    if they do not suffice).
    """

    sigma_min: float
    sigma_max: float
    divergence: str = "hutchinson"
    probe: str = "rademacher"
    solver: str = "rk4"
    steps: int = 100
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 1000

    def __post_init__(self) -> None:
        check_choice("divergence", self.divergence, DIVERGENCES)
        check_choice("probe", self.probe, PROBES)
        check_choice("solver", self.solver, SOLVERS)
        lo, hi = _check_sigmas(self.sigma_min, self.sigma_max)
        object.__setattr__(self, "sigma_min", lo)
        object.__setattr__(self, "sigma_max", hi)
        _check_positive_int("steps", self.steps)
        _check_positive_int("max_steps", self.max_steps)
        _check_tolerance("rtol", self.rtol)
        _check_tolerance("atol", self.atol)


# ---------------------------------------------------------------------------------------------
# The augmented ODE


def _example_keys(key: jax.Array, batch: int) -> jax.Array:
    """Example b's key: `keys[b]` of per-example keys `[B]`, or `fold_in(key, b)` of one key
    (then example b's draws do not depend on the batch size). [B]"""
    key = _check_key(key, batch)
    return key if key.ndim == 1 else item_keys(key, batch)


def _draw_probe(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype, probe: str) -> jax.Array:
    """One Hutchinson probe per example, from `_example_keys`. [B, ...]"""
    keys = _example_keys(key, shape[0])
    if probe == "gaussian":
        return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(keys)
    return jax.vmap(lambda k: jax.random.rademacher(k, shape[1:], dtype))(keys)


def _augmented_rhs(denoise: Denoise, divergence: str, probe: jax.Array | None) -> _Rhs:
    """`(t, x) -> (g, div_x g)` with `g(x, t) = x - D(x, e^t)` (see the module docstring)."""

    def rhs(t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        sigma = jnp.exp(t)

        def g(y: jax.Array) -> jax.Array:
            return y - denoise(y, sigma).astype(y.dtype)  # [B, ...]

        batch, n = x.shape[0], math.prod(x.shape[1:])
        if divergence == "exact":
            gx, g_lin = jax.linearize(g, x)
            eye = jnp.eye(n, dtype=x.dtype).reshape((n, 1, *x.shape[1:]))
            basis = jnp.broadcast_to(eye, (n, *x.shape))  # [n, B, ...]
            # Examples are independent, so column i of every example's Jacobian in one call.
            cols = jax.vmap(g_lin)(basis).reshape(n, batch, n)  # [n (column), B, n (row)]
            div = jnp.einsum("ibi->b", cols)  # [B]
        else:
            gx, jv = jax.jvp(g, (x,), (probe,))  # [B, ...] twice
            div = jnp.sum((probe * jv).reshape(batch, n), axis=-1)  # [B]
        return gx, div

    return rhs


def _rk4(rhs: _Rhs, x: jax.Array, t0: float, t1: float, steps: int) -> tuple:
    """Classical RK4 from t0 to t1 in `steps` equal steps. -> (x_end, int div dt, nfe)."""
    ts = jnp.linspace(t0, t1, steps + 1, dtype=x.dtype)  # [steps + 1]

    def step(state: tuple, tt: tuple) -> tuple[tuple, None]:
        x, acc = state
        t, t_next = tt
        h = t_next - t
        k1x, k1d = rhs(t, x)
        k2x, k2d = rhs(t + 0.5 * h, x + 0.5 * h * k1x)
        k3x, k3d = rhs(t + 0.5 * h, x + 0.5 * h * k2x)
        k4x, k4d = rhs(t_next, x + h * k3x)
        x = x + h / 6 * (k1x + 2 * k2x + 2 * k3x + k4x)
        acc = acc + h / 6 * (k1d + 2 * k2d + 2 * k3d + k4d)
        return (x, acc), None

    acc0 = jnp.zeros(x.shape[:1], x.dtype)  # [B]
    (x, acc), _ = jax.lax.scan(step, (x, acc0), (ts[:-1], ts[1:]))
    return x, acc, jnp.asarray(4 * steps, jnp.int32)


# Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae": nodes, stages, the
# fifth-order weights (the last stage row, FSAL) and the error weights b5 - b4.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_E = (
    71 / 57600,
    0.0,
    -71 / 16695,
    71 / 1920,
    -17253 / 339200,
    22 / 525,
    -1 / 40,
)


def _dopri5(
    rhs: _Rhs, x: jax.Array, t0: float, t1: float, rtol: float, atol: float, max_steps: int
) -> tuple:
    """Adaptive Dormand-Prince 5(4) from t0 to t1 (t1 > t0) on the joint state (x, int div dt),
    errors scaled by `atol + rtol * max(|y|, |y_new|)`; the error of a step is the largest over
    the batch of each example's max(RMS error of x, error of acc); step factor
    `clip(0.9 * err^(-1/5), 0.2, 10)` (Hairer, Norsett & Wanner, "Solving ODEs I", II.4).
    The outputs are NaN if `max_steps` attempted steps do not reach t1. -> (x_end, acc, nfe)."""
    dtype = x.dtype
    t0_, t1_ = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    y0 = (x, jnp.zeros(x.shape[:1], dtype))  # ([B, ...], [B])

    def f(t: jax.Array, y: tuple) -> tuple:
        return rhs(t, y[0])

    def combine(y: tuple, h: jax.Array, coeffs: tuple, ks: list) -> tuple:
        out = []
        for i, yi in enumerate(y):
            s = yi
            for c, k in zip(coeffs, ks, strict=False):
                if c != 0.0:
                    s = s + (h * c) * k[i]
            out.append(s)
        return tuple(out)

    def body(carry: tuple) -> tuple:
        t, h, y, k1, nfe, n = carry
        last = h >= t1_ - t
        h = jnp.minimum(h, t1_ - t)
        ks = [k1]
        for i in range(1, 7):
            ks.append(f(t + _DP_C[i] * h, combine(y, h, _DP_A[i], ks)))
        y_new = combine(y, h, _DP_A[6], ks)  # fifth order; ks[6] = f(t + h, y_new)
        err_parts = combine(tuple(jnp.zeros_like(a) for a in y), h, _DP_E, ks)
        # Per example: the larger of the RMS error over x and the error of the log-density
        # integral (the quantity of interest, not diluted by the size of x); the worst example
        # sets the step.
        (ex, ea), (x0, a0), (x1, a1) = err_parts, y, y_new
        scale_x = atol + rtol * jnp.maximum(jnp.abs(x0), jnp.abs(x1))  # [B, ...]
        rms_x = jnp.sqrt(jnp.mean((ex / scale_x).reshape(ex.shape[0], -1) ** 2, axis=-1))  # [B]
        err_a = jnp.abs(ea) / (atol + rtol * jnp.maximum(jnp.abs(a0), jnp.abs(a1)))  # [B]
        err = jnp.max(jnp.maximum(rms_x, err_a))
        ok = jnp.isfinite(err)
        accept = ok & (err <= 1.0)
        factor = jnp.where(ok, jnp.clip(0.9 * jnp.maximum(err, 1e-10) ** -0.2, 0.2, 10.0), 0.2)
        t = jnp.where(accept, jnp.where(last, t1_, t + h), t)
        y = jax.tree.map(lambda a, b: jnp.where(accept, b, a), y, y_new)
        k1 = jax.tree.map(lambda a, b: jnp.where(accept, b, a), k1, ks[6])
        return t, h * factor, y, k1, nfe + 6, n + 1

    def cond(carry: tuple) -> jax.Array:
        t, _, _, _, _, n = carry
        return (t < t1_) & (n < max_steps)

    k1 = f(t0_, y0)
    h0 = (t1_ - t0_) / 64
    init = (t0_, h0, y0, k1, jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32))
    t, _, (x, acc), _, nfe, _ = jax.lax.while_loop(cond, body, init)
    done = t >= t1_
    x = jnp.where(done, x, jnp.nan)
    acc = jnp.where(done, acc, jnp.nan)
    return x, acc, nfe


# ---------------------------------------------------------------------------------------------
# Public API


def nll(
    denoise: Denoise, x: jax.Array, key: jax.Array | None = None, *, ode: ODESettings
) -> Likelihood:
    """Negative log-likelihood of continuous data through the PF-ODE (module docstring).

    `x [B, ...]` (any shape; `D = prod(x.shape[1:])` dimensions per example) in the denoiser's
    scale; `denoise(x [B, ...], sigma []) -> [B, ...]` must treat examples independently.
    Returns `-log p_{sigma_min}(x)` per example in nats and bits/dim, with the prior
    `N(0, sigma_max^2 I)`, solving the ODE as `ode` sets. `key` draws the Hutchinson probes (it
    is unused by the exact divergence): one key, or one key per example `[B]` (module docstring,
    "Random keys"). The state is held in at least float32. Jit-able with `ode` static, e.g.
    `jax.jit(functools.partial(nll, denoise), static_argnames="ode")(x, key, ode=ode)`.
    """
    _check_ode(ode)
    if ode.divergence == "hutchinson" and key is None:
        raise UserError("divergence='hutchinson' needs a key for its probe; pass key=")
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] < 1 or math.prod(x.shape[1:]) < 1:
        raise UserError(f"x must be a non-empty batch [B, ...] with B, D >= 1; got {x.shape}")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UserError(f"x must be real-valued; got dtype {x.dtype}")
    x = x.astype(dtype)
    batch, dim = x.shape[0], math.prod(x.shape[1:])

    e = _draw_probe(key, x.shape, dtype, ode.probe) if ode.divergence == "hutchinson" else None
    rhs = _augmented_rhs(denoise, ode.divergence, e)
    t0, t1 = math.log(ode.sigma_min), math.log(ode.sigma_max)
    if ode.solver == "rk4":
        x_end, delta, nfe = _rk4(rhs, x, t0, t1, ode.steps)
    else:
        x_end, delta, nfe = _dopri5(rhs, x, t0, t1, ode.rtol, ode.atol, ode.max_steps)

    hi = ode.sigma_max
    sq = jnp.sum(x_end.reshape(batch, dim) ** 2, axis=-1)  # [B]
    prior = -0.5 * sq / hi**2 - 0.5 * dim * math.log(2 * math.pi * hi**2)  # [B]
    nats = -(prior + delta)  # [B]
    return Likelihood(nats, nats / (dim * math.log(2.0)), prior, delta, x_end, nfe)


def dequantize(
    images: jax.Array, key: jax.Array, data_range: tuple[float, float] = (-1.0, 1.0)
) -> jax.Array:
    """Uniform dequantization of 8-bit `images [B, ...]`: `lo + (hi - lo) * (k + u) / 256` with
    `u ~ U[0, 1)` drawn for example b from `keys[b]` of per-example keys `[B]`, or from
    `fold_in(key, b)` of one key. Float32 [B, ...]."""
    lo, hi = _check_data_range(data_range)
    images = _check_images(images)
    keys = _example_keys(key, images.shape[0])  # [B]
    u = jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], jnp.float32))(keys)
    return lo + (hi - lo) * (images.astype(jnp.float32) + u) / 256.0


def _draw_keys(key: jax.Array, draw: jax.Array) -> jax.Array:
    """The dequantization and probe keys of draw `draw` of one key. [2]"""
    return jax.random.split(jax.random.fold_in(key, draw))


def bits_per_dim(
    denoise: Denoise,
    images_uint8: jax.Array,
    key: jax.Array,
    *,
    ode: ODESettings,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_dequant_samples: int = 1,
) -> DiscreteLikelihood:
    """Bits/dim of 8-bit data `images_uint8 [B, ...]` (values 0..255) under the PF-ODE density
    with uniform dequantization (module docstring):

        bits/dim = E_u[NLL_x] / (D ln 2) + 8 - log2(hi - lo),   data_range = (lo, hi),

    an upper bound on `-log2 P(k) / D`, averaged over `num_dequant_samples` draws of `u` (each
    with its own Hutchinson probe), solving the ODE as `ode` sets. `key` is one key, or one key
    per example `[B]`: draw s of example b then comes from `fold_in(keys[b], s)` alone (module
    docstring, "Random keys"). The continuous results of each draw come back stacked in
    `continuous` [S, B, ...]. Jit-able with `ode` static, as `nll`.
    """
    lo, hi = _check_data_range(data_range)
    images = _check_images(images_uint8)
    _check_positive_int("num_dequant_samples", num_dequant_samples)
    _check_ode(ode)
    key = _check_key(key, images.shape[0])
    dim = math.prod(images.shape[1:])

    def one_draw(draw: jax.Array) -> Likelihood:
        if key.ndim == 0:
            keys = _draw_keys(key, draw)  # [2]
        else:
            keys = jax.vmap(_draw_keys, (0, None))(key, draw)  # [B, 2]
        x = dequantize(images, keys[..., 0], (lo, hi))  # [B, ...]
        return nll(denoise, x, keys[..., 1], ode=ode)

    cont = jax.lax.map(one_draw, jnp.arange(num_dequant_samples))  # fields [S, B, ...]
    nats = jnp.mean(cont.nats, axis=0) - dim * math.log((hi - lo) / 256.0)  # [B]
    return DiscreteLikelihood(nats, nats / (dim * math.log(2.0)), cont)


def _check_data_range(data_range: object) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserError(f"data_range={data_range!r} must be a pair (lo, hi)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"data_range=({lo}, {hi}) must satisfy lo < hi, both finite")
    return lo, hi


def _check_images(images: object) -> jax.Array:
    """uint8 images, or integer images whose concrete values are in 0..255, else a UserError."""
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        images = np.asarray(images)
        dtype = images.dtype
    if dtype != jnp.uint8:
        if not jnp.issubdtype(dtype, jnp.integer):
            raise UserError(
                f"images have dtype {dtype}; bits_per_dim needs 8-bit images (uint8, values "
                "0..255); use nll() for continuous data"
            )
        if isinstance(images, jax.core.Tracer):
            raise UserError(
                f"images have dtype {dtype} under tracing; pass uint8 images (values 0..255)"
            )
        values = np.asarray(images)
        if values.size and (values.min() < 0 or values.max() > 255):
            bad = values.min() if values.min() < 0 else values.max()
            raise UserError(f"image value {bad} is outside 0..255; 8-bit images are accepted")
    images = jnp.asarray(images)
    if images.ndim < 2 or images.shape[0] < 1 or math.prod(images.shape[1:]) < 1:
        raise UserError(f"images must be a non-empty batch [B, ...]; got shape {images.shape}")
    return images
