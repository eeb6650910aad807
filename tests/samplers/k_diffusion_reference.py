"""k-diffusion's own samplers (`k_diffusion/sampling.py` of k-diffusion 0.1.1) run on the exact
denoiser of a Gaussian mixture in float64, as the reference for jaxdiff's samplers that carry
their names.

k-diffusion is installed with `--no-deps` (`make install-test`): its package `__init__` imports
its whole training stack (torchvision, kornia, clip, clean-fid, ...), but `sampling.py` needs only
torch, scipy, torchsde, torchdiffeq and, from its package, `utils.append_dims`. So `sampling.py`
is loaded on its own, as a module of a stand-in package whose `utils` has that one function.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import pathlib
import sys
import types
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxdiff.benchmarks.mixtures import GaussianMixture, as_dtype, exact_denoise
from jaxdiff.samplers.noise import independent_noise

K_DIFFUSION = "k-diffusion==0.1.1"
_PACKAGE = "k_diffusion_sampling_reference"


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """k-diffusion's `utils.append_dims`: trailing singleton axes up to `target_dims`."""
    if target_dims < x.ndim:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x[(...,) + (None,) * (target_dims - x.ndim)]


@functools.cache
def sampling() -> types.ModuleType:
    """k-diffusion's `sampling` module, loaded without its package `__init__`."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{K_DIFFUSION} is missing: `make install-test` installs it")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    package = types.ModuleType(_PACKAGE)
    package.__path__ = []
    package.utils = types.ModuleType(f"{_PACKAGE}.utils")
    package.utils.append_dims = _append_dims
    sys.modules[_PACKAGE] = package
    sys.modules[f"{_PACKAGE}.utils"] = package.utils
    module_spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """JAX with x64 and torch's default dtype float64 (k-diffusion makes its adaptive solver's
    time tensors with `torch.tensor(float)`)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with jax.enable_x64(True):
            yield
    finally:
        torch.set_default_dtype(previous)


# model(x [B, d], sigma [B]) -> denoised [B, d], as k-diffusion calls it
TorchDenoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def torch_denoiser(mixture: GaussianMixture) -> TorchDenoise:
    """The exact float64 denoiser as a k-diffusion model `model(x [B, d], sigma [B])`; call it
    inside `float64()`."""
    mix64 = as_dtype(mixture, jnp.float64)

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        denoised = exact_denoise(mix64, jnp.asarray(x.numpy()), jnp.asarray(sigma[0].item()))
        return torch.from_numpy(np.array(denoised))

    return model


@functools.partial(jax.jit, static_argnums=1)
def _independent_noise(
    key: jax.Array, shape: tuple[int, ...], sigma: jax.Array, sigma_next: jax.Array
) -> jax.Array:
    return independent_noise(key, shape, jnp.float64)(sigma, sigma_next)


def noise_sampler(key: jax.Array, shape: tuple[int, ...]) -> Callable:
    """jaxdiff's "independent" noise for `key` as a k-diffusion `noise_sampler(sigma,
    sigma_next)`, so that both add the same noise over each interval; call it inside
    `float64()`."""

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        eps = _independent_noise(key, shape, float(sigma), float(sigma_next))  # [*shape]
        return torch.from_numpy(np.array(eps))

    return sample
