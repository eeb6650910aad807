"""The conditional UNet denoiser of latent diffusion (Rombach et al. 2022), in Flax NNX.

Same module tree, attribute names and math as diffusers' `UNet2DConditionModel` with its default
options (positional time embedding, "default" resnet time conditioning, GEGLU transformers,
`UNetMidBlock2DCrossAttn`), on NHWC tensors. The residual UNet with a sinusoidal time embedding
is Ho et al. 2020; cross-attention to a text encoding is Rombach et al. 2022.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.attention import Transformer2DModel
from jaxdiff.models.embeddings import TimestepEmbedding, Timesteps
from jaxdiff.models.layers import (
    Downsample2D,
    GroupNorm,
    ResnetBlock2D,
    Upsample2D,
    architecture,
    block_runner,
    conv2d,
)

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

ResnetFactory = Callable[[int, int], ResnetBlock2D]
"""(in_channels, out_channels) -> a resnet with the UNet's time width, groups, eps and dtypes."""
TransformerFactory = Callable[..., Transformer2DModel]
"""(channels, heads, only_cross_attention=...) -> a spatial transformer with the UNet's options."""


class DownBlock2D(nnx.Module):
    """diffusers `DownBlock2D`: `resnets`, then an optional stride-2 `downsamplers[0]`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_downsample: bool,
        resnet: ResnetFactory,
        downsample: Callable[[int], Downsample2D],
    ):
        self.resnets = nnx.List(
            [
                resnet(in_channels if i == 0 else out_channels, out_channels)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nnx.List([downsample(out_channels)] if add_downsample else [])

    def __call__(
        self, x: jax.Array, temb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        """x [B, H, W, Cin] -> (h [B, H', W', Cout], skip activations for the up path).

        `context` is unused: every block has the same signature.
        """
        skips = []
        for resnet in self.resnets:
            x = resnet(x, temb)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class CrossAttnDownBlock2D(DownBlock2D):
    """diffusers `CrossAttnDownBlock2D`: each resnet followed by a spatial transformer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_downsample: bool,
        resnet: ResnetFactory,
        downsample: Callable[[int], Downsample2D],
        transformer: TransformerFactory,
        heads: int,
        only_cross_attention: bool,
    ):
        super().__init__(in_channels, out_channels, num_layers, add_downsample, resnet, downsample)
        self.attentions = nnx.List(
            [
                transformer(out_channels, heads, only_cross_attention=only_cross_attention)
                for _ in range(num_layers)
            ]
        )

    def __call__(
        self, x: jax.Array, temb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        """x [B, H, W, Cin], context [B, T, D] -> (h [B, H', W', Cout], skip activations)."""
        skips = []
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            x = attn(resnet(x, temb), context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class UNetMidBlock2DCrossAttn(nnx.Module):
    """diffusers `UNetMidBlock2DCrossAttn`: resnets[0] -> attentions[0] -> resnets[1]."""

    def __init__(
        self, channels: int, resnet: ResnetFactory, transformer: TransformerFactory, heads: int
    ):
        self.resnets = nnx.List([resnet(channels, channels), resnet(channels, channels)])
        self.attentions = nnx.List([transformer(channels, heads, only_cross_attention=False)])

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        """x [B, h, w, C], context [B, T, D] -> [B, h, w, C]."""
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UpBlock2D(nnx.Module):
    """diffusers `UpBlock2D`: resnets over [h, skip] concatenations, then an optional
    nearest-2x + conv `upsamplers[0]`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        num_layers: int,
        add_upsample: bool,
        resnet: ResnetFactory,
        upsample: Callable[[int], Upsample2D],
    ):
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(resnet(resnet_in + skip_channels, out_channels))
        self.resnets = nnx.List(resnets)
        self.upsamplers = nnx.List([upsample(out_channels)] if add_upsample else [])

    def _upsample(self, x: jax.Array) -> jax.Array:
        for up in self.upsamplers:
            x = up(x)
        return x

    def __call__(
        self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array, context: jax.Array
    ) -> jax.Array:
        """x [B, h, w, Cprev], skips (last one used first) -> [B, h', w', Cout].

        `context` is unused: every block has the same signature.
        """
        for resnet, skip in zip(self.resnets, reversed(skips), strict=True):
            x = resnet(jnp.concatenate([x, skip], axis=-1), temb)
        return self._upsample(x)


class CrossAttnUpBlock2D(UpBlock2D):
    """diffusers `CrossAttnUpBlock2D`: each skip-concatenating resnet followed by a transformer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        num_layers: int,
        add_upsample: bool,
        resnet: ResnetFactory,
        upsample: Callable[[int], Upsample2D],
        transformer: TransformerFactory,
        heads: int,
        only_cross_attention: bool,
    ):
        super().__init__(
            in_channels,
            out_channels,
            prev_output_channel,
            num_layers,
            add_upsample,
            resnet,
            upsample,
        )
        self.attentions = nnx.List(
            [
                transformer(out_channels, heads, only_cross_attention=only_cross_attention)
                for _ in range(num_layers)
            ]
        )

    def __call__(
        self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array, context: jax.Array
    ) -> jax.Array:
        """x [B, h, w, Cprev], skips, context [B, T, D] -> [B, h', w', Cout]."""
        for resnet, attn, skip in zip(self.resnets, self.attentions, reversed(skips), strict=True):
            x = attn(resnet(jnp.concatenate([x, skip], axis=-1), temb), context)
        return self._upsample(x)


ENCODER_ARGUMENTS = (
    "in_channels",
    "block_out_channels",
    "down_block_types",
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "norm_num_groups",
    "norm_eps",
    "flip_sin_to_cos",
    "freq_shift",
    "use_linear_projection",
    "upcast_attention",
    "only_cross_attention",
    "transformer_layers_per_block",
)
"""The architecture arguments of `UNetEncoder`: what a ControlNet shares with the UNet it steers."""


def encoder_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The `ENCODER_ARGUMENTS` among a constructor's `arguments`."""
    return {name: arguments[name] for name in ENCODER_ARGUMENTS}


class UNetEncoder(nnx.Module):
    """What diffusers' `UNet2DConditionModel` and `ControlNetModel` share: the input convolution
    `conv_in`, the time embedding (`time_proj`, `time_embedding`), the `down_blocks` and the
    `mid_block`, with the UNet's arguments (see `UNet`)."""

    def _build_encoder(
        self,
        *,
        in_channels: int,
        block_out_channels: Sequence[int],
        down_block_types: Sequence[str],
        layers_per_block: int,
        attention_head_dim: int | Sequence[int],
        cross_attention_dim: int,
        norm_num_groups: int,
        norm_eps: float,
        flip_sin_to_cos: bool,
        freq_shift: int,
        use_linear_projection: bool,
        upcast_attention: bool,
        only_cross_attention: bool,
        transformer_layers_per_block: int,
        remat: bool,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ) -> tuple[ResnetFactory, TransformerFactory, list[int]]:
        """Builds the shared modules; returns the resnet and transformer factories and the heads
        of each level, for the modules a subclass adds."""
        levels = len(block_out_channels)
        heads = _per_level_heads(attention_head_dim, block_out_channels)
        _check_block_types("down_block_types", down_block_types, DOWN_BLOCK_TYPES, levels)
        self.dtype = dtype
        self.remat = remat
        self.num_upsamplers = levels - 1
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        time_embed_dim = block_out_channels[0] * 4
        resnet = functools.partial(
            ResnetBlock2D, temb_channels=time_embed_dim, groups=norm_num_groups, eps=norm_eps, **kw
        )
        transformer = functools.partial(
            Transformer2DModel,
            cross_attention_dim=cross_attention_dim,
            num_layers=transformer_layers_per_block,
            norm_num_groups=norm_num_groups,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            **kw,
        )
        downsample = functools.partial(Downsample2D, padding=1, **kw)

        self.conv_in = conv2d(in_channels, block_out_channels[0], 3, **kw)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, **kw)

        down_blocks: list[DownBlock2D] = []
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            args: tuple[Any, ...] = (
                in_ch,
                out_ch,
                layers_per_block,
                i < levels - 1,
                resnet,
                downsample,
            )
            if block_type == "CrossAttnDownBlock2D":
                down_blocks.append(
                    CrossAttnDownBlock2D(*args, transformer, heads[i], only_cross_attention)
                )
            else:
                down_blocks.append(DownBlock2D(*args))
        self.down_blocks = nnx.List(down_blocks)
        self.mid_block = UNetMidBlock2DCrossAttn(
            block_out_channels[-1], resnet, transformer, heads[-1]
        )
        return resnet, transformer, heads

    def _check_size(self, x: jax.Array) -> None:
        _, height, width, _ = x.shape
        factor = 2**self.num_upsamplers
        if height % factor or width % factor:
            raise UserError(
                f"{type(self).__name__} input of spatial size {height}x{width}; accepted: "
                f"multiples of {factor}"
            )

    def _time_embed(self, timesteps: jax.Array, batch: int) -> jax.Array:
        """timesteps [B] or [] -> the time embedding [B, 4 * C0] in the compute dtype."""
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))  # [B]
        return self.time_embedding(self.time_proj(t).astype(self.dtype))

    def _encode(
        self, h: jax.Array, temb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        """conv_in's output h [B, H, W, C0] -> (the mid block's output [B, h, w, C], the skip
        activations of the up path: conv_in's, then each down block's)."""
        run = block_runner(self.remat)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = run(block, h, temb, context)
            skips.extend(block_skips)
        return run(self.mid_block, h, temb, context), skips


class UNet(UNetEncoder):
    """Text-conditional UNet, diffusers `UNet2DConditionModel` (defaults) on NHWC tensors.

    Args:
      in_channels, out_channels: channels of the input sample and of the prediction (an
        inpainting UNet takes 9 = latent + mask + masked latent).
      block_out_channels: channels of each resolution level, highest resolution first.
      down_block_types, up_block_types: one per level, from `DOWN_BLOCK_TYPES` / `UP_BLOCK_TYPES`
        (up blocks listed from the lowest resolution up).
      layers_per_block: resnets per down block (up blocks have one more).
      attention_head_dim: as in diffusers' config, the number of attention HEADS of each level's
        transformers (diffusers issue #2011 keeps the historical name); one int or one per level.
        A head is `channels // attention_head_dim` wide. The mid block uses the last level's.
      cross_attention_dim: width of the text context.
      norm_num_groups, norm_eps: GroupNorm groups and eps of the resnets and output norm.
      flip_sin_to_cos, freq_shift: the sinusoidal time projection (SD: True, 0).
      use_linear_projection: transformers project in/out with Linear instead of 1x1 convs (SD 2).
      upcast_attention: attention products in float32 (SD 2.1).
      only_cross_attention: each transformer's first attention also attends to the context.
      transformer_layers_per_block: transformer blocks inside each spatial transformer.
      sample_size: the latent size the weights were trained at (pipelines' default image size is
        this times the autoencoder's factor), or None; the computation does not use it.
      remat: recompute each block's activations in the backward pass instead of keeping them
        (``jax.checkpoint`` per down / mid / up block): less memory for more compute.
      dtype, param_dtype: compute and parameter dtypes; norms and softmax compute in float32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        down_block_types: Sequence[str],
        up_block_types: Sequence[str],
        layers_per_block: int,
        attention_head_dim: int | Sequence[int],
        cross_attention_dim: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        only_cross_attention: bool = False,
        transformer_layers_per_block: int = 1,
        sample_size: int | None = None,
        remat: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture(locals())
        resnet, transformer, heads = self._build_encoder(
            **encoder_arguments(locals()),
            remat=remat,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        levels = len(block_out_channels)
        _check_block_types("up_block_types", up_block_types, UP_BLOCK_TYPES, levels)
        self.sample_size = sample_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        upsample = functools.partial(Upsample2D, **kw)

        up_blocks: list[UpBlock2D] = []
        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(heads))
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            in_ch = reversed_channels[min(i + 1, levels - 1)]
            args = (in_ch, out_ch, prev_ch, layers_per_block + 1, i < levels - 1, resnet, upsample)
            if block_type == "CrossAttnUpBlock2D":
                up_blocks.append(
                    CrossAttnUpBlock2D(*args, transformer, reversed_heads[i], only_cross_attention)
                )
            else:
                up_blocks.append(UpBlock2D(*args))
        self.up_blocks = nnx.List(up_blocks)

        self.conv_norm_out = GroupNorm(
            norm_num_groups, block_out_channels[0], norm_eps, dtype=dtype, param_dtype=param_dtype
        )
        self.conv_out = conv2d(block_out_channels[0], out_channels, 3, **kw)

    def __call__(
        self,
        x: jax.Array,
        timesteps: jax.Array,
        context: jax.Array,
        down_block_additional_residuals: Sequence[jax.Array] | None = None,
        mid_block_additional_residual: jax.Array | None = None,
    ) -> jax.Array:
        """x [B, H, W, Cin], timesteps [B] or [] (broadcast), context [B, T, D] -> [B, H, W, Cout].

        A ControlNet's residuals (`ControlNet.__call__`) are added to the skip activations (one
        per skip, conv_in's first) and to the mid block's output. H and W must be multiples of
        2 ** (levels - 1). The output is in the compute dtype.
        """
        self._check_size(x)
        temb = self._time_embed(timesteps, x.shape[0])  # [B, 4 * C0]
        context = context.astype(self.dtype)
        h = self.conv_in(x.astype(self.dtype))  # [B, H, W, C0]
        h, skips = self._encode(h, temb, context)
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise UserError(
                    f"{len(down_block_additional_residuals)} down-block residuals; accepted: one "
                    f"per skip activation of this UNet ({len(skips)})"
                )
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)]
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        run = block_runner(self.remat)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = run(block, h, skips[-n:], temb, context)
            skips = skips[:-n]
        h = jax.nn.silu(self.conv_norm_out(h))
        return self.conv_out(h)  # [B, H, W, Cout]


def _check_block_types(
    name: str, types: Sequence[str], accepted: Sequence[str], levels: int
) -> None:
    if len(types) != levels:
        raise UserError(
            f"{name} has {len(types)} entries; accepted: one per entry of "
            f"block_out_channels ({levels})"
        )
    for block_type in types:
        if block_type not in accepted:
            raise UserError(f"unknown {name} entry {block_type!r}; accepted: {', '.join(accepted)}")


def _per_level_heads(
    attention_head_dim: int | Sequence[int], block_out_channels: Sequence[int]
) -> list[int]:
    """Heads per level: diffusers' `attention_head_dim`, one int for all levels or one per level."""
    if isinstance(attention_head_dim, int):
        return [attention_head_dim] * len(block_out_channels)
    if len(attention_head_dim) != len(block_out_channels):
        raise UserError(
            f"attention_head_dim={tuple(attention_head_dim)} has {len(attention_head_dim)} "
            f"entries; accepted: one int or one per entry of block_out_channels "
            f"({len(block_out_channels)})"
        )
    return list(attention_head_dim)


UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: two levels, attention at the top one.
    "tiny": dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=8,
    ),
    # The 8x8x4-latent shapes demo (levels 8x8, 4x4, 2x2; attention at 4x4 and 2x2, two heads
    # of 32): a batch of 64 trains (forward + backward) in about 0.25 s on one CPU core.
    "shapes": dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=128,
        norm_num_groups=32,
    ),
    # runwayml/stable-diffusion-v1-5 unet/config.json (859,520,964 parameters).
    "sd15": dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
    ),
    # stabilityai/stable-diffusion-2-1 unet/config.json (865,910,724 parameters).
    "sd2": dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
    ),
}
"""Named UNet sizes: `UNet(**UNET_PRESETS[name], dtype=..., rngs=...)`."""
