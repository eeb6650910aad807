"""ControlNet (Zhang, Rao & Agrawala 2023) in Flax NNX: a trainable copy of a UNet's encoder that
reads a conditioning image (edges, depth, a pose, a mask) and returns residuals the UNet adds to
its skip activations and to its mid block's output.

Same module tree, attribute names and math as diffusers' `ControlNetModel` on NHWC tensors:
`controlnet_cond_embedding` (a small conv stack with SiLU, stride 2 between its stages, whose
zero-initialised `conv_out` is added to `conv_in`'s output), the UNet's `conv_in`, time embedding,
`down_blocks` and `mid_block`, and a zero-initialised 1x1 convolution per residual
(`controlnet_down_blocks`, `controlnet_mid_block`), so that a ControlNet copied from a UNet
(`ControlNet.from_unet`) starts by changing nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.layers import architecture, conv2d
from jaxdiff.models.unet import ENCODER_ARGUMENTS, UNet, UNetEncoder, encoder_arguments

CHANNEL_ORDERS = ("rgb", "bgr")

Residuals = tuple[tuple[jax.Array, ...], jax.Array]
"""(a residual per skip activation of the UNet [B, h_i, w_i, C_i], the mid block's [B, h, w, C])."""


class ControlNetConditioningEmbedding(nnx.Module):
    """diffusers `ControlNetConditioningEmbedding`: conv_in, then per stage a 3x3 conv and a
    stride-2 3x3 conv (`blocks`), SiLU after each, and a zero-initialised `conv_out`."""

    def __init__(
        self,
        conditioning_channels: int,
        block_out_channels: Sequence[int],
        out_channels: int,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_in = conv2d(conditioning_channels, block_out_channels[0], 3, **kw)
        blocks = []
        for c_in, c_out in itertools.pairwise(block_out_channels):
            blocks.append(conv2d(c_in, c_in, 3, **kw))
            blocks.append(conv2d(c_in, c_out, 3, stride=2, **kw))
        self.blocks = nnx.List(blocks)
        self.conv_out = conv2d(block_out_channels[-1], out_channels, 3, zero_init=True, **kw)

    def __call__(self, cond: jax.Array) -> jax.Array:
        """cond [B, H, W, Ccond] -> [B, H / 2**stages, W / 2**stages, C0]."""
        h = jax.nn.silu(self.conv_in(cond))
        for block in self.blocks:
            h = jax.nn.silu(block(h))
        return self.conv_out(h)


class ControlNet(UNetEncoder):
    """diffusers `ControlNetModel` (SD 1.x / 2.x) on NHWC tensors.

    Args:
      in_channels ... transformer_layers_per_block: as `UNet`'s, which a ControlNet must share
        with the UNet it steers (`from_unet` copies them).
      conditioning_channels: channels of the conditioning image.
      conditioning_embedding_out_channels: channels of the conditioning embedding's stages; each
        stage after the first halves the resolution (the default's three: pixels -> latents of
        an autoencoder with factor 8).
      controlnet_conditioning_channel_order: "rgb", or "bgr" (the image's channels reversed).
      global_pool_conditions: each residual averaged over its spatial positions (and guess mode
        on, in the pipelines, as diffusers does).
      remat, dtype, param_dtype: as `UNet`'s.
    """

    def __init__(
        self,
        in_channels: int,
        block_out_channels: Sequence[int],
        down_block_types: Sequence[str],
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
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        controlnet_conditioning_channel_order: str = "rgb",
        global_pool_conditions: bool = False,
        remat: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture(locals())
        if controlnet_conditioning_channel_order not in CHANNEL_ORDERS:
            raise UserError(
                f"controlnet_conditioning_channel_order={controlnet_conditioning_channel_order!r}"
                f"; accepted: {', '.join(CHANNEL_ORDERS)}"
            )
        if not conditioning_embedding_out_channels:
            raise UserError(
                "conditioning_embedding_out_channels is empty; accepted: one or more channels"
            )
        self._build_encoder(
            **encoder_arguments(locals()),
            remat=remat,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bgr = controlnet_conditioning_channel_order == "bgr"
        self.global_pool_conditions = global_pool_conditions
        self.conditioning_factor = 2 ** (len(conditioning_embedding_out_channels) - 1)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_channels,
            conditioning_embedding_out_channels,
            block_out_channels[0],
            **kw,
        )
        skip_channels = [block_out_channels[0]]
        for i, channels in enumerate(block_out_channels):
            downsamples = 1 if i < len(block_out_channels) - 1 else 0
            skip_channels += [channels] * (layers_per_block + downsamples)
        self.controlnet_down_blocks = nnx.List(
            [conv2d(c, c, 1, zero_init=True, **kw) for c in skip_channels]
        )
        mid = block_out_channels[-1]
        self.controlnet_mid_block = conv2d(mid, mid, 1, zero_init=True, **kw)

    @classmethod
    def from_unet(
        cls,
        unet: UNet,
        *,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        controlnet_conditioning_channel_order: str = "rgb",
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        rngs: nnx.Rngs,
    ) -> ControlNet:
        """A ControlNet for `unet` with copies of its encoder's weights (`conv_in`, the time
        embedding, the down and mid blocks), as diffusers' `ControlNetModel.from_unet`: with its
        zero convolutions at zero it leaves the UNet's output as it is. Dtypes default to the
        UNet's."""
        controlnet = cls(
            **arguments_for(
                unet,
                conditioning_channels=conditioning_channels,
                conditioning_embedding_out_channels=conditioning_embedding_out_channels,
                controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            ),
            remat=unet.remat,
            dtype=unet.dtype if dtype is None else dtype,
            param_dtype=unet.conv_in.kernel.dtype if param_dtype is None else param_dtype,
            rngs=rngs,
        )
        controlnet.copy_encoder(unet)
        return controlnet

    def copy_encoder(self, unet: UNet) -> None:
        """Sets `conv_in`, the time embedding, the down and mid blocks to copies of `unet`'s
        (new arrays, cast to this ControlNet's parameter dtype)."""
        mine, theirs = dict(self.architecture), dict(unet.architecture)
        for key in ENCODER_ARGUMENTS:
            if mine[key] != theirs[key]:
                raise UserError(
                    f"the ControlNet has {key}={mine[key]!r}, the UNet {theirs[key]!r}; "
                    "accepted: a ControlNet with the UNet's encoder (ControlNet.from_unet)"
                )
        for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            state = nnx.state(getattr(unet, name), nnx.Param)
            target = nnx.state(getattr(self, name), nnx.Param)
            nnx.update(
                getattr(self, name),
                jax.tree.map(lambda src, dst: jnp.array(src, dst.dtype, copy=True), state, target),
            )

    def __call__(
        self,
        x: jax.Array,
        timesteps: jax.Array,
        context: jax.Array,
        cond: jax.Array,
        conditioning_scale: float | jax.Array = 1.0,
        guess_mode: bool | jax.Array = False,
    ) -> Residuals:
        """x [B, h, w, Cin], timesteps [B] or [], context [B, T, D], cond [B, H, W, Ccond] (the
        conditioning image in [0, 1], H = h x `conditioning_factor`) -> the UNet's residuals
        (`Residuals`), in the compute dtype.

        `conditioning_scale` ([] or [B]) multiplies every residual; `guess_mode` ([] or [B],
        traced) scales them further from 0.1 (the first skip) to 1 (the mid block), log-spaced,
        as diffusers does (not with `global_pool_conditions`)."""
        self._check_size(x)
        b, h, w, _ = x.shape
        want = (b, h * self.conditioning_factor, w * self.conditioning_factor)
        if cond.shape[:3] != want:
            raise UserError(
                f"ControlNet conditioning image of shape {tuple(cond.shape)}; accepted: "
                f"{want} + (channels,) for latents of shape {tuple(x.shape)}"
            )
        if self.bgr:
            cond = cond[..., ::-1]
        temb = self._time_embed(timesteps, b)  # [B, 4 * C0]
        context = context.astype(self.dtype)
        sample = self.conv_in(x.astype(self.dtype))  # [B, h, w, C0]
        sample = sample + self.controlnet_cond_embedding(cond.astype(self.dtype))
        mid, skips = self._encode(sample, temb, context)
        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips, strict=True)]
        mid = self.controlnet_mid_block(mid)

        scale = jnp.broadcast_to(jnp.asarray(conditioning_scale, jnp.float32), (b,))  # [B]
        if self.global_pool_conditions:
            scales = jnp.ones((b, len(down) + 1)) * scale[:, None]  # [B, n + 1]
        else:
            guess = jnp.broadcast_to(jnp.asarray(guess_mode, bool), (b,))  # [B]
            ramp = jnp.logspace(-1.0, 0.0, len(down) + 1)  # [n + 1], 0.1 ... 1
            scales = jnp.where(guess[:, None], ramp, 1.0) * scale[:, None]  # [B, n + 1]
        scales = scales.astype(self.dtype)[:, :, None, None, None]  # [B, n + 1, 1, 1, 1]
        residuals = [r * scales[:, i] for i, r in enumerate([*down, mid])]
        if self.global_pool_conditions:
            residuals = [r.mean(axis=(1, 2), keepdims=True) for r in residuals]
        return tuple(residuals[:-1]), residuals[-1]


def arguments_for(unet: UNet, **conditioning: Any) -> dict[str, Any]:
    """The architecture arguments of a ControlNet for `unet`: the UNet's encoder's, and the
    `conditioning` ones (`conditioning_channels`, ...)."""
    if unet.add_embedding is not None:
        raise UserError(
            "a ControlNet for an SDXL UNet (addition_embed_type='text_time') is not supported; "
            "accepted: UNets without an added embedding"
        )
    if unet.class_embedding is not None:
        raise UserError(
            "a ControlNet for a UNet with class embeddings (num_class_embeds, the x4 "
            "upscaler's) is not supported; accepted: UNets without them"
        )
    return {**encoder_arguments(dict(unet.architecture)), **conditioning}


def check_steers(controlnet: ControlNet, unet: UNet, name: str = "controlnet") -> None:
    """A one-line error unless `controlnet`'s residuals fit `unet` (the same levels, channels,
    blocks and cross-attention width) and it reads the UNet's latents (for a 9-channel
    inpainting UNet: the 4 latent channels)."""
    mine, theirs = dict(controlnet.architecture), dict(unet.architecture)
    expected = {
        "in_channels": theirs["out_channels"],
        **{
            key: theirs[key]
            for key in (
                "block_out_channels",
                "down_block_types",
                "layers_per_block",
                "cross_attention_dim",
            )
        },
    }
    for key, value in expected.items():
        if mine[key] != value:
            raise UserError(
                f"{name} has {key}={mine[key]!r}, the UNet needs {value!r}; accepted: a "
                "ControlNet made for this UNet"
            )
