"""Samplers over the denoiser `D(x, sigma) -> x0_hat`, and guidance transforms of it.

`get(name)` returns a registered sampler `fn(denoise, x, sigmas, key=None, **options) -> x`;
`names()` lists them. The sampler families are the modules listed in `registry.py`; each
registers its samplers with `@register` (see `base.py`).
"""

from jaxdiff.samplers.base import (
    Denoise,
    Sampler,
    check_sigmas,
    check_start,
    evals_per_step,
    get,
    is_stochastic,
    names,
    option_defaults,
    register,
    starts_at_infinity,
)
from jaxdiff.samplers.guidance import cfg
from jaxdiff.samplers.noise import NOISE_KINDS, make_noise
from jaxdiff.samplers.registry import FAMILIES

__all__ = [
    "FAMILIES",
    "NOISE_KINDS",
    "Denoise",
    "Sampler",
    "cfg",
    "check_sigmas",
    "check_start",
    "evals_per_step",
    "get",
    "is_stochastic",
    "make_noise",
    "names",
    "option_defaults",
    "register",
    "starts_at_infinity",
]
