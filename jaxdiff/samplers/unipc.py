"""UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", in its data-prediction form with the B(h) coefficients (diffusers'
`UniPCMultistepScheduler` with `predict_x0=True`), written in sigma space.

With `lambda = -log sigma`, a step from `sigma_s` to `sigma_t` (`h = lambda_t - lambda_s`) is

    x_t = (sigma_t / sigma_s) x_s - expm1(-h) m_s - B(h) sum_k rho_k D_k,
    D_k = (m_k - m_s) / r_k,  r_k = (lambda_k - lambda_s) / h,

where `m` are x0 predictions at earlier (or, for the corrector, later) noise levels, `B(h) = -h`
("bh1") or `expm1(-h)` ("bh2"), and `rho` solves the Vandermonde system
`sum_k rho_k r_k^j = b_(j+1)`, `b_j = j! (-h) phi_(j+1)(-h) / B(h)` over the nodes in use; with a
single node `rho = 1/2` (diffusers' simplification). The predictor UniP-p uses the p - 1 previous
predictions; the corrector UniC-p re-takes the previous step once `m_t = D(x_t, sigma_t)` is known,
with those p - 1 nodes plus `m_t` (`r = 1`), so it reuses the evaluation the next step needs.
The corrected `x_t` starts the next step; `m_t` (at the uncorrected `x_t`) joins the history.

From `sigmas[0] = inf` (see `base`) the first step is its limit `sigma_1 eps + m_0`, and its
correction `B(h) rho (m_1 - m_0)` with `B(h) -> -1` for "bh2" (`r = 1`; "bh1"'s `B(h) = -h` is
infinite there, so it refuses sigma = inf with the corrector). Later steps drop the node at
sigma = inf: its `r` tends to -inf, `D_k` to 0 and its `rho_k` to 0, and the other weights to
the solution of the system without it (which for one remaining node is `b_1`, not the 1/2 of
diffusers' single-node rule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.errors import check_choice
from jaxdiff.samplers.base import Denoise, register

ORDERS = (1, 2, 3)
VARIANTS = ("bh1", "bh2")


def _rhos(r: jax.Array, q: jax.Array, hh: jax.Array, b_h: jax.Array, halve: jax.Array) -> jax.Array:
    """The weights [K] of the first `q` of the K nodes `r` [K]: the `q x q` Vandermonde system
    in the top-left corner of an identity, so that the shape is static and unused nodes drop out
    (`r` must be finite there); `rho = 1/2` for a single node where `halve`."""
    k = r.shape[0]
    b = []
    g = jnp.expm1(hh) / hh - 1.0  # (-h) phi_2(-h)
    factorial = 1
    for j in range(1, k + 1):
        b.append(g * factorial / b_h)
        factorial *= j + 1
        g = g / hh - 1.0 / factorial
    idx = jnp.arange(k)
    used = idx < q
    powers = jnp.stack([r**j for j in range(k)])  # [K, K]: row j holds r^j
    system = jnp.where(used[:, None] & used[None, :], powers, jnp.eye(k, dtype=r.dtype))
    rho = jnp.linalg.solve(system, jnp.where(used, jnp.stack(b), 0.0))
    return jnp.where(halve, jnp.where(idx == 0, 0.5, 0.0), rho)


def _uni_bh_update(
    x: jax.Array,
    m: jax.Array,
    sigma_s: jax.Array,
    sigma_t: jax.Array,
    node_m: jax.Array,
    node_lam: jax.Array,
    q: jax.Array,
    bh2: bool,
) -> jax.Array:
    """One UniP (or UniC) B(h) update of `x` [B, ...] at `sigma_s > 0`, whose x0 prediction is
    `m` [B, ...], to `sigma_t` (0 allowed when `q = 0`), with the first `q` of the nodes
    `node_m` [K, B, ...] at `node_lam` [K] (diffusers' `multistep_uni_p_bh_update` and
    `multistep_uni_c_bh_update`). `sigma_s = inf` and nodes at sigma = inf take their limits
    (module docstring)."""
    lam_s, lam_t = -jnp.log(sigma_s), -jnp.log(sigma_t)
    hh = lam_s - lam_t  # -h; -inf at sigma_t = 0 or sigma_s = inf, where expm1 gives -1
    kept = jnp.where(jnp.isinf(sigma_s), sigma_t * x, (sigma_t / sigma_s) * x)
    x_t = kept - jnp.expm1(hh) * m
    k = node_m.shape[0]
    if k == 0:
        return x_t
    used = (jnp.arange(k) < q) & jnp.isfinite(node_lam)  # [K]; a node at sigma = inf drops out
    # From sigma_s = inf the only node is the corrector's, at sigma_t: r = 1.
    r = jnp.where(jnp.isinf(sigma_s), 1.0, (node_lam - lam_s) / (lam_t - lam_s))
    r = jnp.where(used, r, 1.0)
    b_h = jnp.expm1(hh) if bh2 else hh
    rho = _rhos(r, jnp.sum(used), hh, b_h, halve=q == 1)
    coef = jnp.where(used, b_h * rho, 0.0)  # [K]
    d = (node_m - m) / r.reshape((k,) + (1,) * m.ndim)  # [K, B, ...]
    return x_t - jnp.tensordot(coef, d, axes=1)


def _bh1_corrector(options: dict) -> str:
    """The `unipc` options without a limit at sigma = inf (see the module docstring)."""
    if options["variant"] == "bh1" and options["corrector"]:
        return "variant='bh1' and corrector=True"
    return ""


@register("unipc", starts_at_infinity=_bh1_corrector)
def unipc(
    denoise: Denoise,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
) -> jax.Array:
    """UniPC multistep sampler (Zhao et al. 2023, UniPC-p with B(h); diffusers'
    `UniPCMultistepScheduler`, `predict_x0=True`). x: [B, ...]; sigmas: [n + 1] descending.
    One denoiser call per step.

    Step i uses order `min(order, i + 1)` (warm-up), further capped at `n - i` when
    `lower_order_final` (diffusers' rule, at any n); a step to sigma = 0 is always first order
    (higher orders extrapolate in lambda to infinity, where diffusers gives inf). `corrector`
    applies UniC, of the order of the step it corrects, before every step but the first (the
    final step is not corrected), like diffusers with `disable_corrector=[]`; `False` is
    `disable_corrector` listing every step. `variant` picks B(h): "bh1" (`-h`) or "bh2"
    (`expm1(-h)`).
    """
    check_choice("sampler 'unipc': order", order, ORDERS)
    check_choice("sampler 'unipc': variant", variant, VARIANTS)
    bh2 = variant == "bh2"
    n = sigmas.shape[0] - 1
    lambdas = -jnp.log(sigmas)  # [n + 1]; inf at sigma = 0

    def step_order(i: jax.Array) -> jax.Array:
        p = jnp.minimum(order, i + 1)
        if lower_order_final:
            p = jnp.minimum(p, n - i)
        return jnp.where(sigmas[i + 1] > 0, p, 1)

    # x0 predictions kept between steps: the corrector needs one more than the predictor.
    keep = order if corrector else order - 1

    def step(carry: tuple, i: jax.Array) -> tuple[tuple, None]:
        # x: x_i as predicted; x_prev: x_(i-1) as corrected; ms [keep, B, ...], lams [keep]:
        # x0 predictions m_(i-1), m_(i-2), ... and their lambdas.
        x, x_prev, ms, lams = carry
        m = denoise(x, sigmas[i])  # [B, ...]
        if corrector:
            x = jax.lax.cond(
                i > 0,
                lambda: _uni_bh_update(
                    x_prev,
                    ms[0],
                    sigmas[i - 1],
                    sigmas[i],
                    jnp.concatenate([m[None], ms[1:]]),
                    jnp.concatenate([lambdas[i][None], lams[1:]]),
                    step_order(i - 1),
                    bh2,
                ),
                lambda: x,
            )
        ms = jnp.concatenate([m[None], ms])  # [keep + 1, B, ...]: m_i, m_(i-1), ...
        lams = jnp.concatenate([lambdas[i][None], lams])
        x_next = _uni_bh_update(
            x, m, sigmas[i], sigmas[i + 1], ms[1:order], lams[1:order], step_order(i) - 1, bh2
        )
        return (x_next, x, ms[:keep], lams[:keep]), None

    history = (jnp.zeros((keep, *x.shape), x.dtype), jnp.zeros((keep,), sigmas.dtype))
    (x, *_), _ = jax.lax.scan(step, (x, x, *history), jnp.arange(n))
    return x
