"""The KL-regularized autoencoder of latent diffusion (Rombach et al. 2022), in Flax NNX.

Same module tree, attribute names and math as diffusers' `AutoencoderKL` (`Encoder`, `Decoder`,
`DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D`, `quant_conv`, `post_quant_conv`) with
SiLU activations and group norms of eps 1e-6, on NHWC tensors. The VAE objective is Kingma &
Welling 2014.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.models.attention import SpatialSelfAttention
from jaxdiff.models.layers import (
    Downsample2D,
    GroupNorm,
    ResnetBlock2D,
    Upsample2D,
    architecture,
    conv2d,
)

_EPS = 1e-6


def _resnet_stack(
    in_channels: int, out_channels: int, num_layers: int, groups: int, kw: dict[str, Any]
) -> nnx.List:
    """``num_layers`` time-free residual blocks, the first changing the channel count."""
    return nnx.List(
        [
            ResnetBlock2D(
                in_channels if i == 0 else out_channels,
                out_channels,
                None,
                groups=groups,
                eps=_EPS,
                **kw,
            )
            for i in range(num_layers)
        ]
    )


class DownEncoderBlock2D(nnx.Module):
    """diffusers `DownEncoderBlock2D`: `resnets` (no time embedding), optional `downsamplers[0]`
    (stride-2 conv padded at the bottom and right)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_downsample: bool,
        *,
        groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = _resnet_stack(in_channels, out_channels, num_layers, groups, kw)
        self.downsamplers = nnx.List(
            [Downsample2D(out_channels, 0, **kw)] if add_downsample else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, Cin] -> [B, H', W', Cout]."""
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    """diffusers `UpDecoderBlock2D`: `resnets`, optional nearest-2x + conv `upsamplers[0]`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_upsample: bool,
        *,
        groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = _resnet_stack(in_channels, out_channels, num_layers, groups, kw)
        self.upsamplers = nnx.List([Upsample2D(out_channels, **kw)] if add_upsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, h, w, Cin] -> [B, h', w', Cout]."""
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class UNetMidBlock2D(nnx.Module):
    """diffusers `UNetMidBlock2D` (no time embedding): resnets[0] -> attentions[0] -> resnets[1];
    without `add_attention` the attention list is empty."""

    def __init__(
        self,
        channels: int,
        add_attention: bool,
        *,
        groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List(
            [
                ResnetBlock2D(channels, channels, None, groups=groups, eps=_EPS, **kw)
                for _ in range(2)
            ]
        )
        self.attentions = nnx.List(
            [SpatialSelfAttention(channels, norm_num_groups=groups, eps=_EPS, **kw)]
            if add_attention
            else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, h, w, C] -> [B, h, w, C]."""
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nnx.Module):
    """diffusers `Encoder` (double_z): image -> 2 * latent_channels moments (mean, logvar)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        norm_num_groups: int,
        mid_block_add_attention: bool,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        levels = len(block_out_channels)
        self.conv_in = conv2d(in_channels, block_out_channels[0], 3, **kw)
        blocks = []
        out_ch = block_out_channels[0]
        for i in range(levels):
            in_ch, out_ch = out_ch, block_out_channels[i]
            blocks.append(
                DownEncoderBlock2D(
                    in_ch, out_ch, layers_per_block, i < levels - 1, groups=norm_num_groups, **kw
                )
            )
        self.down_blocks = nnx.List(blocks)
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1], mid_block_add_attention, groups=norm_num_groups, **kw
        )
        self.conv_norm_out = GroupNorm(
            norm_num_groups, block_out_channels[-1], _EPS, dtype=dtype, param_dtype=param_dtype
        )
        self.conv_out = conv2d(block_out_channels[-1], 2 * latent_channels, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, Cin] -> [B, H/f, W/f, 2 * latent_channels]."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """diffusers `Decoder` (norm_type "group"): latent -> image; up blocks have
    `layers_per_block + 1` resnets."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        norm_num_groups: int,
        mid_block_add_attention: bool,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        levels = len(block_out_channels)
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = conv2d(latent_channels, reversed_channels[0], 3, **kw)
        self.mid_block = UNetMidBlock2D(
            reversed_channels[0], mid_block_add_attention, groups=norm_num_groups, **kw
        )
        blocks = []
        out_ch = reversed_channels[0]
        for i in range(levels):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            blocks.append(
                UpDecoderBlock2D(
                    prev_ch,
                    out_ch,
                    layers_per_block + 1,
                    i < levels - 1,
                    groups=norm_num_groups,
                    **kw,
                )
            )
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = GroupNorm(
            norm_num_groups, block_out_channels[0], _EPS, dtype=dtype, param_dtype=param_dtype
        )
        self.conv_out = conv2d(block_out_channels[0], out_channels, 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        """z [B, h, w, L] -> [B, h*f, w*f, Cout]."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """diffusers `AutoencoderKL`: `encoder`, `quant_conv`, `post_quant_conv`, `decoder`.

    `encode` gives the diagonal Gaussian posterior (mean, logvar), logvar clamped to [-30, 20] as
    diffusers' `DiagonalGaussianDistribution` does; `decode` maps a latent back to an image.
    `scaling_factor` is the constant the diffusion model's latents are multiplied by
    (`latents = z * scaling_factor`); the autoencoder itself never applies it. `sample_size` (the
    image size it was trained at) and `force_upcast` (it overflows in float16: decode in float32)
    are facts about the weights for pipelines, as in diffusers. Outputs are in the compute dtype.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 1,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        scaling_factor: float = 1.0,
        sample_size: int = 32,
        force_upcast: bool = True,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture(locals())
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.scaling_factor = scaling_factor
        self.sample_size = sample_size
        self.force_upcast = force_upcast
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)
        arch = (block_out_channels, layers_per_block, norm_num_groups, mid_block_add_attention)
        self.encoder = Encoder(in_channels, latent_channels, *arch, **kw)
        self.quant_conv = conv2d(2 * latent_channels, 2 * latent_channels, 1, **kw)
        self.post_quant_conv = conv2d(latent_channels, latent_channels, 1, **kw)
        self.decoder = Decoder(latent_channels, out_channels, *arch, **kw)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, H, W, Cin] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, L]."""
        moments = self.quant_conv(self.encoder(x.astype(self.dtype)))  # [B, h, w, 2L]
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, h, w, L] -> image [B, h*f, w*f, Cout]."""
        return self.decoder(self.post_quant_conv(z.astype(self.dtype)))


VAE_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: 16x16 -> 8x8.
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ),
    # The shapes demo: 32x32x3 images <-> 8x8x4 latents (downsample factor 4); a batch of 32
    # trains (encode + decode, forward + backward) in about 0.26 s on one CPU core.
    "shapes": dict(
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ),
    # The Stable Diffusion 1.x / 2.x VAE, vae/config.json (83,653,863 parameters).
    "sd_vae": dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=0.18215,
    ),
}
"""Named autoencoder sizes: `AutoencoderKL(**VAE_PRESETS[name], dtype=..., rngs=...)`."""
