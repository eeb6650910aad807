"""Samplers over the denoiser `D(x, sigma) -> x0_hat`, and guidance transforms of it.

`get(name)` returns a registered sampler `fn(denoise, x, sigmas, key=None, **options) -> x`;
`names()` lists them. Each sampler module registers its samplers on import (see `base.py`).
"""

from jaxdiff.samplers import ode
from jaxdiff.samplers.base import Denoise, Sampler, check_sigmas, get, names, register
from jaxdiff.samplers.guidance import cfg

__all__ = ["Denoise", "Sampler", "cfg", "check_sigmas", "get", "names", "ode", "register"]
