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
        only_cross_attention: bool | Sequence[bool],
        transformer_layers_per_block: int | Sequence[int],
        remat: bool,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ) -> tuple[ResnetFactory, TransformerFactory, list[int], list[int], list[bool]]:
        """Builds the shared modules; returns the resnet and transformer factories, and the heads,
        transformer depths and `only_cross_attention` of each level, for the modules a subclass
        adds."""
        levels = len(block_out_channels)
        heads = _per_level("attention_head_dim", attention_head_dim, block_out_channels)
        depths = _per_level(
            "transformer_layers_per_block", transformer_layers_per_block, block_out_channels
        )
        cross_only = _per_level_flag(
            "only_cross_attention", only_cross_attention, block_out_channels
        )
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
                level = functools.partial(transformer, num_layers=depths[i])
                down_blocks.append(CrossAttnDownBlock2D(*args, level, heads[i], cross_only[i]))
            else:
                down_blocks.append(DownBlock2D(*args))
        self.down_blocks = nnx.List(down_blocks)
        self.mid_block = UNetMidBlock2DCrossAttn(
            block_out_channels[-1],
            resnet,
            functools.partial(transformer, num_layers=depths[-1]),
            heads[-1],
        )
        self.time_embed_dim = time_embed_dim
        return resnet, transformer, heads, depths, cross_only

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
      only_cross_attention: each transformer's first attention attends to the context instead
        of to itself; one bool or one per level (the x4 upscaler: True, True, True, False).
        Never in the mid block.
      transformer_layers_per_block: transformer blocks inside each spatial transformer; one int
        or one per level (SDXL: 1, 2, 10). The mid block uses the last level's; up blocks mirror.
      addition_embed_type: None, or "text_time" (SDXL): `add_time_proj` (sinusoidal,
        `addition_time_embed_dim` wide, of each micro-conditioning number) and `add_embedding`
        (an MLP from the pooled text embedding and those, `projection_class_embeddings_input_dim`
        wide in all) add to the time embedding; the call then takes `text_embeds` and
        `time_ids`.
      num_class_embeds: None, or the size of a table of class embeddings (`class_embedding`)
        added to the time embedding; the call then takes `class_labels` (the x4 upscaler's
        noise level).
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
        only_cross_attention: bool | Sequence[bool] = False,
        transformer_layers_per_block: int | Sequence[int] = 1,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        projection_class_embeddings_input_dim: int | None = None,
        num_class_embeds: int | None = None,
        sample_size: int | None = None,
        remat: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture(locals())
        resnet, transformer, heads, depths, cross_only = self._build_encoder(
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
        add_time_proj = add_embedding = None
        if addition_embed_type == "text_time":
            if not addition_time_embed_dim or not projection_class_embeddings_input_dim:
                raise UserError(
                    "addition_embed_type='text_time' needs addition_time_embed_dim and "
                    "projection_class_embeddings_input_dim; accepted: positive widths"
                )
            add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            add_embedding = TimestepEmbedding(
                projection_class_embeddings_input_dim, self.time_embed_dim, **kw
            )
        elif addition_embed_type is not None:
            raise UserError(
                f"addition_embed_type={addition_embed_type!r} is not supported; accepted: None, "
                "'text_time'"
            )
        self.add_time_proj, self.add_embedding = add_time_proj, add_embedding
        class_embedding = None
        if num_class_embeds is not None:
            count = num_class_embeds
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise UserError(f"num_class_embeds={num_class_embeds!r}; accepted: None or >= 1")
            class_embedding = nnx.Embed(num_class_embeds, self.time_embed_dim, **kw)
        self.class_embedding = class_embedding
        upsample = functools.partial(Upsample2D, **kw)

        up_blocks: list[UpBlock2D] = []
        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(heads))
        reversed_depths = list(reversed(depths))
        reversed_cross_only = list(reversed(cross_only))
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            in_ch = reversed_channels[min(i + 1, levels - 1)]
            args = (in_ch, out_ch, prev_ch, layers_per_block + 1, i < levels - 1, resnet, upsample)
            if block_type == "CrossAttnUpBlock2D":
                level = functools.partial(transformer, num_layers=reversed_depths[i])
                up_blocks.append(
                    CrossAttnUpBlock2D(*args, level, reversed_heads[i], reversed_cross_only[i])
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
        *,
        text_embeds: jax.Array | None = None,
        time_ids: jax.Array | None = None,
        class_labels: jax.Array | None = None,
    ) -> jax.Array:
        """x [B, H, W, Cin], timesteps [B] or [] (broadcast), context [B, T, D] -> [B, H, W, Cout].

        A ControlNet's residuals (`ControlNet.__call__`) are added to the skip activations (one
        per skip, conv_in's first) and to the mid block's output. A "text_time" UNet (SDXL)
        takes the pooled text embedding `text_embeds` [B, P] and the micro-conditioning
        `time_ids` [B, K] (diffusers' `added_cond_kwargs`); one with `num_class_embeds`, integer
        `class_labels` [B]. H and W must be multiples of
        2 ** (levels - 1). The output is in the compute dtype.
        """
        self._check_size(x)
        temb = self._time_embed(timesteps, x.shape[0])  # [B, 4 * C0]
        temb = self._class_embedded(temb, class_labels)
        if self.add_embedding is not None:
            temb = temb + self._added_embedding(text_embeds, time_ids)
        elif text_embeds is not None or time_ids is not None:
            raise UserError("text_embeds / time_ids given to a UNet without addition_embed_type")
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

    def _class_embedded(self, temb: jax.Array, class_labels: jax.Array | None) -> jax.Array:
        """The time embedding `[B, 4 * C0]` plus the class labels' embeddings, as diffusers adds
        them (before SDXL's added embedding)."""
        if self.class_embedding is None:
            if class_labels is not None:
                raise UserError("class_labels given to a UNet without num_class_embeds")
            return temb
        count = self.class_embedding.num_embeddings
        if class_labels is None or not jnp.issubdtype(jnp.asarray(class_labels).dtype, jnp.integer):
            raise UserError(
                f"this UNet has num_class_embeds={count}: give class_labels, integers [B] in "
                f"[0, {count})"
            )
        labels = jnp.broadcast_to(jnp.asarray(class_labels, jnp.int32), temb.shape[:1])  # [B]
        return temb + self.class_embedding(labels).astype(temb.dtype)

    def _added_embedding(
        self, text_embeds: jax.Array | None, time_ids: jax.Array | None
    ) -> jax.Array:
        """SDXL's addition to the time embedding: text_embeds [B, P], time_ids [B, K] ->
        [B, 4 * C0]."""
        if text_embeds is None or time_ids is None:
            raise UserError(
                "this UNet (addition_embed_type='text_time') takes text_embeds and time_ids"
            )
        batch = text_embeds.shape[0]
        time_embeds = self.add_time_proj(jnp.ravel(time_ids).astype(jnp.float32))  # [B * K, A]
        added = jnp.concatenate([text_embeds, time_embeds.reshape(batch, -1)], axis=-1)
        width = self.add_embedding.linear_1.kernel.shape[0]
        if added.shape[-1] != width:
            raise UserError(
                f"text_embeds and time_ids give {added.shape[-1]} features; accepted: "
                f"projection_class_embeddings_input_dim = {width}"
            )
        return self.add_embedding(added.astype(self.dtype))


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


def _per_level_flag(
    name: str, value: bool | Sequence[bool], block_out_channels: Sequence[int]
) -> list[bool]:
    """A per-level switch as diffusers gives it, one bool for all levels or one per level."""
    if isinstance(value, bool):
        return [value] * len(block_out_channels)
    given = isinstance(value, Sequence) and not isinstance(value, str)
    if (
        not given
        or len(value) != len(block_out_channels)
        or not all(isinstance(v, bool) for v in value)
    ):
        raise UserError(
            f"{name}={tuple(value) if given else value!r}; accepted: one bool, or one per entry "
            f"of block_out_channels ({len(block_out_channels)})"
        )
    return list(value)


def _per_level(
    name: str, value: int | Sequence[int], block_out_channels: Sequence[int]
) -> list[int]:
    """A per-level option as diffusers gives it, one int for all levels or one per level."""

    def positive(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if positive(value):
        return [value] * len(block_out_channels)
    given = isinstance(value, Sequence) and not isinstance(value, str)
    if not given or len(value) != len(block_out_channels) or not all(map(positive, value)):
        shown = tuple(value) if given else value
        raise UserError(
            f"{name}={shown!r}; accepted: one positive int, or one per entry of "
            f"block_out_channels ({len(block_out_channels)})"
        )
    return list(value)


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
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2,567,463,684 parameters).
    "sdxl": dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2, 10),
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        sample_size=128,
    ),
}
"""Named UNet sizes: `UNet(**UNET_PRESETS[name], dtype=..., rngs=...)`."""
