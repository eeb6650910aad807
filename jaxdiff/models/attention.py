"""Attention layers: the UNet's spatial transformer and the VAE's self-attention.

Module trees and math follow diffusers (`Attention` with `AttnProcessor2_0`,
`BasicTransformerBlock`, `FeedForward`, `GEGLU`, `Transformer2DModel`); the transformer itself is
Vaswani et al. 2017 and its use inside a UNet with cross-attention to text is Rombach et al. 2022.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.layers import Axes, GroupNorm, LayerNorm, constrain, conv2d, dense

HEADS: Axes = ("batch", None, "heads", None)  # the axes of q, k, v [B, T, H, Dh]


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool = False, upcast: bool = False
) -> jax.Array:
    """Scaled dot-product attention, scale 1/sqrt(head_dim), softmax in float32.

    q [B, N, H, Dh], k and v [B, T, H, Dh] -> [B, N, H, Dh] in q's dtype. Scores accumulate in
    float32 whatever the compute dtype; `upcast` (diffusers' `upcast_attention`) also runs the
    products themselves in float32. `is_causal` lets position i attend to positions <= i only.
    """
    dtype = q.dtype
    q, k, v = (constrain(t, HEADS) for t in (q, k, v))
    if upcast:
        q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal)
    return constrain(out.astype(dtype), HEADS)


class Attention(nnx.Module):
    """diffusers `Attention`: multi-head attention with `to_q`, `to_k`, `to_v`, `to_out[0]`.

    Self-attention when `cross_attention_dim` is None, else keys and values come from a context of
    that width. Query/key/value projections have no bias unless `qkv_bias` (the VAE's has one); the
    output projection always has a bias.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None,
        heads: int,
        dim_head: int,
        *,
        qkv_bias: bool = False,
        upcast_attention: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        inner = heads * dim_head
        context_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.upcast_attention = upcast_attention
        self.to_q = dense(query_dim, inner, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_k = dense(context_dim, inner, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_v = dense(context_dim, inner, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_out = nnx.List([dense(inner, query_dim, ("heads", "embed"), **kw)])

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x [B, N, C], context [B, T, D] (None: self-attention) -> [B, N, C]."""
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1)  # [B, N, H, Dh]
        k = self.to_k(context).reshape(b, context.shape[1], self.heads, -1)  # [B, T, H, Dh]
        v = self.to_v(context).reshape(b, context.shape[1], self.heads, -1)  # [B, T, H, Dh]
        out = attention(q, k, v, upcast=self.upcast_attention).reshape(b, n, -1)  # [B, N, H*Dh]
        return self.to_out[0](out)


class GEGLU(nnx.Module):
    """diffusers `GEGLU` (Shazeer 2020): `proj` to 2x width, then `a * gelu(gate)` (exact gelu)."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.proj = dense(
            dim_in, 2 * dim_out, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., dim_in] -> [..., dim_out]."""
        a, gate = jnp.split(self.proj(x), 2, axis=-1)
        return a * jax.nn.gelu(gate, approximate=False)


class GELU(nnx.Module):
    """diffusers `GELU`: `proj`, then gelu (exact, or its tanh approximation)."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        *,
        approximate: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.approximate = approximate
        self.proj = dense(
            dim_in, dim_out, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., dim_in] -> [..., dim_out]."""
        return jax.nn.gelu(self.proj(x), approximate=self.approximate)


FEED_FORWARD_ACTIVATIONS = ("geglu", "gelu", "gelu-approximate")
"""diffusers' `activation_fn` values the feed-forward takes."""


class FeedForward(nnx.Module):
    """diffusers `FeedForward` (mult 4): `net = [activation, Dropout, Linear]`, the activation one
    of `FEED_FORWARD_ACTIVATIONS` (GEGLU in every Stable Diffusion UNet, tanh-approximated GELU in
    DiT).

    The dropout has rate 0, as in every model converted; it keeps diffusers' indices (`net[0]`,
    `net[2]`).
    """

    def __init__(
        self,
        dim: int,
        *,
        mult: int = 4,
        activation_fn: str = "geglu",
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if activation_fn not in FEED_FORWARD_ACTIVATIONS:
            raise UserError(
                f"activation_fn={activation_fn!r}; accepted: {', '.join(FEED_FORWARD_ACTIVATIONS)}"
            )
        inner = dim * mult
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if activation_fn == "geglu":
            activation = GEGLU(dim, inner, **kw)
        else:
            activation = GELU(dim, inner, approximate=activation_fn == "gelu-approximate", **kw)
        self.net = nnx.List(
            [activation, nnx.Dropout(0.0), dense(inner, dim, ("mlp", "embed"), **kw)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, ..., dim] -> [B, ..., dim]."""
        hidden = constrain(self.net[0](x), ("batch",) + (None,) * (x.ndim - 2) + ("mlp",))
        return self.net[2](self.net[1](hidden))


class BasicTransformerBlock(nnx.Module):
    """diffusers `BasicTransformerBlock` (norm_type "layer_norm"), pre-norm residual sub-layers:

    `attn1` self-attention (cross-attention to the context when `only_cross_attention`), `attn2`
    cross-attention to the context, `ff` GEGLU feed-forward; LayerNorms `norm1..3`, eps 1e-5.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        *,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm_kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.only_cross_attention = only_cross_attention
        self.norm1 = LayerNorm(dim, 1e-5, **norm_kw)
        self.attn1 = Attention(
            dim,
            cross_attention_dim if only_cross_attention else None,
            heads,
            dim_head,
            upcast_attention=upcast_attention,
            **kw,
        )
        self.norm2 = LayerNorm(dim, 1e-5, **norm_kw)
        self.attn2 = Attention(
            dim, cross_attention_dim, heads, dim_head, upcast_attention=upcast_attention, **kw
        )
        self.norm3 = LayerNorm(dim, 1e-5, **norm_kw)
        self.ff = FeedForward(dim, **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x [B, N, dim], context [B, T, cross_attention_dim] -> [B, N, dim]."""
        x = x + self.attn1(self.norm1(x), context if self.only_cross_attention else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """diffusers `Transformer2DModel` on continuous input: the UNet's spatial transformer.

    GroupNorm (eps 1e-6) -> `proj_in` (1x1 conv, or Linear when `use_linear_projection`) ->
    `transformer_blocks` over the H*W tokens -> `proj_out` -> plus the input.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        cross_attention_dim: int,
        *,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if heads <= 0 or channels % heads:
            raise UserError(
                f"attention_head_dim={heads} (heads) does not divide a {channels}-channel "
                "attention level; accepted: a positive divisor of that level's channels"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = GroupNorm(norm_num_groups, channels, 1e-6, dtype=dtype, param_dtype=param_dtype)
        if use_linear_projection:
            self.proj_in = dense(channels, channels, ("conv_in", "conv_out"), **kw)
            self.proj_out = dense(channels, channels, ("conv_in", "conv_out"), **kw)
        else:
            self.proj_in = conv2d(channels, channels, 1, **kw)
            self.proj_out = conv2d(channels, channels, 1, **kw)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    channels,
                    heads,
                    channels // heads,
                    cross_attention_dim,
                    only_cross_attention=only_cross_attention,
                    upcast_attention=upcast_attention,
                    **kw,
                )
                for _ in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x [B, H, W, C], context [B, T, D] -> [B, H, W, C]."""
        b, h, w, c = x.shape
        y = self.norm(x)
        # On NHWC a 1x1 conv and a per-pixel Linear are the same map: both apply before the
        # reshape to tokens.
        y = self.proj_in(y).reshape(b, h * w, c)  # [B, HW, C]
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y.reshape(b, h, w, c))  # [B, H, W, C]
        return y + x


class SpatialSelfAttention(Attention):
    """The VAE mid-block attention: diffusers `Attention` with `group_norm`, one head over all
    channels, biased projections and a residual connection (`_from_deprecated_attn_block`)."""

    def __init__(
        self,
        channels: int,
        *,
        norm_num_groups: int,
        eps: float,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            channels,
            None,
            1,
            channels,
            qkv_bias=True,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.group_norm = GroupNorm(
            norm_num_groups, channels, eps, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:  # type: ignore[override]
        """x [B, H, W, C] -> [B, H, W, C]."""
        b, h, w, c = x.shape
        y = self.group_norm(x).reshape(b, h * w, c)  # [B, HW, C]
        return x + super().__call__(y).reshape(b, h, w, c)
