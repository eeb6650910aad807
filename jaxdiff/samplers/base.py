"""The sampler contract and registry.

A sampler is a pure function `sampler(denoise, x, sigmas, key=None, **options) -> x` that
integrates from noise level `sigmas[0]` down to `sigmas[-1]` with `jax.lax.scan`, where
`denoise(x, sigma) -> x0_hat` takes a scalar sigma. Samplers never see eps or v.

Adding a sampler family is one small module whose functions are decorated with
`@register("name")` plus one entry in `FAMILIES` (`registry.py`). `register` also records
`evals_per_step`, the denoiser calls one step makes (2 for Heun), which a benchmark uses to turn
a budget of function evaluations into a number of steps, and read back with
`evals_per_step(name)`.

The registered function takes `(denoise, x, sigmas, key)` positionally and its options
keyword-only; `register` wraps it so that every sampler, before it runs:

- checks `sigmas` (1-D, at least 2 entries, strictly descending, non-negative, finite) when the
  values are concrete (the check is skipped under tracing);
- rejects options the sampler does not take with a `UserError` naming the accepted ones;
- holds its state in at least float32: `x` and `sigmas` are cast up, and the denoiser's output is
  cast to the state dtype, whatever dtype the network computes in (a bf16 state gives NaNs).

Starting at sigma = inf. A flow's noise end, t = 1, is sigma = inf in the form
`x = x0 + sigma * eps`, where x itself is infinite. The contract carries it by a limit: a
sampler registered with `starts_at_infinity` accepts `sigmas[0] = inf`, its `x` there is the
limit of `x / sigma` (the unit noise `eps`, the flow's `x_t` at t = 1), and the denoiser is
called at sigma = inf with that state and returns the limit of `D` (the network at t = 1; see
`jaxdiff.diffusion.Diffusion.denoiser`). Every step from or through sigma = inf is the limit of
the sampler's own step as `sigmas[0] -> inf` (`noise_direction` is the state's noise there:
the state itself), taken in a `jnp.where` beside the finite step, so every finite step is the
same formula as before (results from a finite start may move by the compiler's rounding, about
one float32 ulp). In those limits an intermediate level is the
limit of its own formula (a midpoint in log sigma between inf and a finite sigma is inf), and a
past value at sigma = inf drops out of a multistep formula (its weight tends to 0). A limit is
used rather than another time variable because changing the variable changes the method (Heun
in flow time is not Heun in sigma): `flow_heun` is that other method.

A sampler whose step has no finite limit, or one that needs more than the denoiser's value at
infinity, refuses sigma = inf; so do the options of a sampler that make it so (`register`'s
`starts_at_infinity` then names them):

- `heun`, `plms` and `pndm` (whose first step is a Heun or Runge-Kutta step): the trapezoid
  over an infinite interval weighs the difference of D at its two ends by the interval's
  length, so it diverges unless the two are equal;
- `dpm_2`: the midpoint step tends to a limit set by the derivative of D at t = 1;
- `dpm_2_ancestral`: that step again for eta < 1, and for its default eta = 1 a DPM-2 step
  to `sigma_down = sigma_1^2 / sigma_0`, which diverges (for eta > 1, which clamps the noise,
  the limit is the Euler step to D; it is not offered either);
- `dpm_adaptive`: its error-controlled steps in lambda = -log sigma are finite, so from
  lambda = -inf it never leaves;
- `unipc` with variant "bh1" and the corrector: `B(h) = -h` is infinite on the first step.

`starts_at_infinity(name)` says which samplers take it (with some options).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError

# denoise(x [B, ...], sigma []) -> x0_hat [B, ...]
Denoise = Callable[[jax.Array, jax.Array], jax.Array]


class Sampler(Protocol):
    """`sampler(denoise, x [B, ...], sigmas [n + 1], key=None, **options) -> x [B, ...]`."""

    def __call__(
        self,
        denoise: Denoise,
        x: jax.Array,
        sigmas: jax.Array,
        key: jax.Array | None = None,
        **options: Any,
    ) -> jax.Array: ...


_REGISTRY: dict[str, Sampler] = {}
_EVALS_PER_STEP: dict[str, int] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}
# Why the options [defaults | given] of a sampler that starts at sigma = inf have no limit there
# ("" when they have one).
InfiniteStartRefusal = Callable[[dict[str, Any]], str]
_STARTS_AT_INFINITY: dict[str, InfiniteStartRefusal] = {}


def check_sigmas(sigmas: jax.Array, infinite_start: bool = False) -> None:
    """Raise `UserError` unless concrete `sigmas` are 1-D, of length >= 2, finite (but for
    `sigmas[0] = inf` where `infinite_start`), non-negative and strictly descending. Traced sigmas
    are not checked."""
    if isinstance(sigmas, jax.core.Tracer):
        return
    s = np.asarray(sigmas)
    if s.ndim != 1 or s.shape[0] < 2:
        raise UserError(f"sigmas must be 1-D with at least 2 entries; got shape {s.shape}")
    finite = s[1:] if infinite_start and s[0] == np.inf else s
    if not np.all(np.isfinite(finite)) or np.any(s < 0):
        raise UserError(f"sigmas must be finite and non-negative; got {s.tolist()}")
    rising = np.flatnonzero(np.diff(s) >= 0)
    if rising.size:
        i = int(rising[0])
        raise UserError(
            f"sigmas must be strictly descending; got sigmas[{i + 1}]={s[i + 1]} after "
            f"sigmas[{i}]={s[i]}"
        )


def _check_options(name: str, options: dict[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"accepted: {', '.join(accepted)}" if accepted else "it takes no options"
        raise UserError(f"sampler {name!r} does not take option {unknown[0]!r}; {takes}")


def starts_at_infinity(name: str) -> bool:
    """Whether the sampler `name` accepts `sigmas[0] = inf` (see the module docstring)."""
    get(name)
    return name in _STARTS_AT_INFINITY


def check_start(name: str, sigmas: jax.Array, options: dict[str, Any]) -> None:
    """Raise `UserError` for a concrete `sigmas[0] = inf` when the sampler `name` has no limit
    there, or its `options` need a finite start (a Brownian noise path lives on `[0,
    sigmas[0]]`). Every sampler checks this on entry; a caller that jits a sampler with the
    sigmas as traced values checks them first."""
    if isinstance(sigmas, jax.core.Tracer):
        return
    s = np.asarray(sigmas)
    if s.ndim != 1 or not s.size or s[0] != np.inf:
        return
    refusal = _STARTS_AT_INFINITY.get(name)
    why = "" if refusal is None else refusal(_DEFAULTS[name] | options)
    if refusal is None or why:
        raise UserError(
            f"sampler {name!r}{f' with {why}' if why else ''} has no finite step from sigma = "
            "inf (t = 1 of a flow); start at a finite sigma, or use one of: "
            f"{', '.join(sorted(_STARTS_AT_INFINITY))}"
        )
    if options.get("noise") == "brownian":
        raise UserError(
            f"sampler {name!r}: noise='brownian' lives on [0, sigmas[0]] and needs a finite "
            "first sigma; got inf (use noise='independent')"
        )


def noise_direction(x: jax.Array, denoised: jax.Array, sigma: jax.Array) -> jax.Array:
    """`(x - denoised) / sigma`, the noise the state holds; at sigma = inf the state itself (the
    unit noise, see "Starting at sigma = inf"). [B, ...]"""
    return jnp.where(jnp.isinf(sigma), x, (x - denoised) / sigma)


def register(
    name: str,
    evals_per_step: int = 1,
    starts_at_infinity: bool | InfiniteStartRefusal = False,
) -> Callable[[Callable[..., jax.Array]], Sampler]:
    """Decorator: register a sampler function under `name` (see the module docstring);
    `starts_at_infinity` says that it takes `sigmas[0] = inf`: True, or a function of its
    options that names those without a limit there ("" for the others)."""

    def decorate(fn: Callable[..., jax.Array]) -> Sampler:
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is registered twice")
        params = inspect.signature(fn).parameters.values()
        defaults = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        accepted = tuple(defaults)

        @functools.wraps(fn)
        def sampler(
            denoise: Denoise,
            x: jax.Array,
            sigmas: jax.Array,
            key: jax.Array | None = None,
            **options: Any,
        ) -> jax.Array:
            _check_options(name, options, accepted)
            check_start(name, sigmas, options)
            check_sigmas(sigmas, infinite_start=bool(starts_at_infinity))
            x = jnp.asarray(x)
            dtype = jnp.promote_types(x.dtype, jnp.float32)

            def denoise_state(x: jax.Array, sigma: jax.Array) -> jax.Array:
                return denoise(x, sigma).astype(dtype)

            return fn(denoise_state, x.astype(dtype), jnp.asarray(sigmas, dtype), key, **options)

        _REGISTRY[name] = sampler
        _EVALS_PER_STEP[name] = evals_per_step
        _DEFAULTS[name] = defaults
        if starts_at_infinity:
            _STARTS_AT_INFINITY[name] = (
                starts_at_infinity if callable(starts_at_infinity) else lambda options: ""
            )
        return sampler

    return decorate


def names() -> list[str]:
    """Names of all registered samplers, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Sampler:
    """The sampler registered as `name`."""
    if name not in _REGISTRY:
        raise UserError(f"unknown sampler {name!r}; accepted: {', '.join(names())}")
    return _REGISTRY[name]


def evals_per_step(name: str) -> int:
    """Denoiser calls per step of the sampler `name` (at most; a last step to 0 may make fewer)."""
    get(name)
    return _EVALS_PER_STEP[name]


def option_defaults(name: str) -> dict[str, Any]:
    """The options the sampler `name` takes, with their defaults."""
    get(name)
    return dict(_DEFAULTS[name])


def is_stochastic(name: str, options: dict[str, Any]) -> bool:
    """Whether the sampler `name` with `options` adds noise: it takes a `noise` source and its
    `eta` (if it has one) is positive."""
    defaults = option_defaults(name) | options
    return "noise" in defaults and defaults.get("eta", 1.0) > 0
