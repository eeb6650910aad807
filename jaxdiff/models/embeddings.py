"""Timestep embeddings of the UNet (diffusers `Timesteps` + `TimestepEmbedding`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.models.layers import dense


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool,
    downscale_freq_shift: float,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps, diffusers `get_timestep_embedding`.

    The transformer position encoding (Vaswani et al. 2017) as used by DDPM (Ho et al. 2020):
    frequencies `exp(-log(max_period) * i / (dim/2 - downscale_freq_shift))`, [sin, cos] halves
    ([cos, sin] when `flip_sin_to_cos`), zero-padded to an odd `dim`.

    timesteps [B] -> [B, dim] float32.
    """
    half = dim // 2
    exponent = (
        -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    )
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]  # [B, half]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)  # [B, 2*half]
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class Timesteps(nnx.Module):
    """diffusers `Timesteps`: the parameter-free sinusoidal projection of the timesteps."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float):
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        """timesteps [B] -> [B, num_channels] float32."""
        return timestep_embedding(
            timesteps,
            self.num_channels,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
        )


class TimestepEmbedding(nnx.Module):
    """diffusers `TimestepEmbedding` (act_fn="silu"): Linear -> SiLU -> Linear."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = dense(in_channels, time_embed_dim, ("embed", "mlp"), **kw)
        self.linear_2 = dense(time_embed_dim, time_embed_dim, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, in_channels] -> [B, time_embed_dim]."""
        return self.linear_2(jax.nn.silu(self.linear_1(x)))
