"""MMDiT, the text-conditioned transformer of Stable Diffusion 3 (Esser et al. 2024, "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis"), as diffusers'
`SD3Transformer2DModel` on NHWC tensors.

Image tokens (patches of the latent) and text tokens (the text encoder's hidden states, projected
by `context_embedder`) keep separate weights in every block but meet in one attention over both
(`JointAttention`: the image tokens first, then the text). Each block is modulated by adaLN-Zero
from a conditioning vector, the time embedding plus a projection of the pooled text embedding
(`time_text_embed`). The last block updates only the image tokens (`context_pre_only`). Options
from SD3.5: RMS-normalized queries and keys (`qk_norm="rms_norm"`) and a second, image-only
attention in the first blocks (`dual_attention_layers`).

Positions are a fixed 2-D sine-cosine table on a `pos_embed_max_size` grid, stored with the model
as diffusers stores it (`pos_embed.pos_embed`, a `Buffer`), and centre-cropped to the input's
grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.attention import FeedForward, attention
from jaxdiff.models.dit import (
    TIME_CHANNELS,
    AdaLayerNormZero,
    check_patches,
    sincos_positions,
    unpatchify,
)
from jaxdiff.models.embeddings import TimestepEmbedding, Timesteps
from jaxdiff.models.layers import (
    TOKENS,
    Buffer,
    LayerNorm,
    RMSNorm,
    architecture,
    block_runner,
    constrain,
    conv2d,
    dense,
)

QK_NORMS = (None, "rms_norm")


class CroppedPatchEmbed(nnx.Module):
    """diffusers `PatchEmbed` with `pos_embed_max_size`: `proj`, a patch_size-strided
    convolution, plus `pos_embed`, positions on a max x max grid (scaled to the trained grid,
    `sample_size // patch_size` cells), centre-cropped to the input's grid."""

    def __init__(
        self,
        sample_size: int,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        pos_embed_max_size: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.max_size = pos_embed_max_size
        self.proj = conv2d(
            in_channels,
            embed_dim,
            patch_size,
            stride=patch_size,
            padding=0,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        grid = (embed_dim, pos_embed_max_size, pos_embed_max_size, sample_size // patch_size)
        # A host callback: an abstract build (`eval_shape`) skips the table (SD3.5 Medium's is
        # 384^2 x 1536 floats); a real one computes it as diffusers does, in float64.
        table = jax.pure_callback(
            lambda: sincos_positions(*grid)[None],
            jax.ShapeDtypeStruct((1, pos_embed_max_size**2, embed_dim), jnp.float32),
        )
        self.pos_embed = Buffer(table.astype(param_dtype))  # [1, max^2, D]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> tokens [B, H/p * W/p, D]."""
        h = self.proj(x)  # [B, H/p, W/p, D]
        b, rows, cols, dim = h.shape
        if rows > self.max_size or cols > self.max_size:
            raise UserError(
                f"a {rows}x{cols} grid of patches; accepted: at most pos_embed_max_size="
                f"{self.max_size} a side"
            )
        top, left = (self.max_size - rows) // 2, (self.max_size - cols) // 2
        table = self.pos_embed[...].reshape(self.max_size, self.max_size, dim)
        positions = table[top : top + rows, left : left + cols].reshape(rows * cols, dim)
        return (h.reshape(b, rows * cols, dim) + positions).astype(h.dtype)


class CombinedTimestepTextProjEmbeddings(nnx.Module):
    """diffusers `CombinedTimestepTextProjEmbeddings`: the time embedding (sinusoidal, 256 wide,
    cos first, no frequency shift, then an MLP) plus the projected pooled text embedding."""

    def __init__(
        self,
        dim: int,
        pooled_projection_dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.time_proj = Timesteps(TIME_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(TIME_CHANNELS, dim, **kw)
        # diffusers' `PixArtAlphaTextProjection` with SiLU: the same Linear -> SiLU -> Linear.
        self.text_embedder = TimestepEmbedding(pooled_projection_dim, dim, **kw)

    def __call__(self, timesteps: jax.Array, pooled: jax.Array) -> jax.Array:
        """timesteps [B], pooled [B, pooled_projection_dim] -> [B, dim]."""
        time = self.timestep_embedder(self.time_proj(timesteps).astype(self.dtype))
        return time + self.text_embedder(pooled.astype(self.dtype))


class AdaLayerNormContinuous(nnx.Module):
    """diffusers `AdaLayerNormContinuous` (layer norm without parameters, eps 1e-6): from the
    conditioning, `linear` predicts a scale and a shift (in that order). It starts at zero, so
    the norm starts unmodulated."""

    def __init__(
        self,
        dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear = dense(dim, 2 * dim, ("embed", "mlp"), zero_init=True, **kw)
        self.norm = LayerNorm(
            dim, 1e-6, elementwise_affine=False, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array, conditioning: jax.Array) -> jax.Array:
        """x [B, N, D], conditioning [B, D] -> [B, N, D]."""
        scale, shift = jnp.split(self.linear(jax.nn.silu(conditioning))[:, None], 2, -1)
        return self.norm(x) * (1 + scale) + shift


class JointAttention(nnx.Module):
    """diffusers `Attention` with `JointAttnProcessor2_0`: the image tokens' `to_q`, `to_k`,
    `to_v`, `to_out[0]` and, with `context`, the text tokens' `add_q_proj`, `add_k_proj`,
    `add_v_proj` and (unless `context_pre_only`) `to_add_out`; one attention over the image
    tokens followed by the text tokens. With `qk_norm="rms_norm"` queries and keys are
    RMS-normalized per head (`norm_q`, `norm_k`, `norm_added_q`, `norm_added_k`). Every
    projection has a bias."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        *,
        context: bool,
        context_pre_only: bool = False,
        qk_norm: str | None = None,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        inner = heads * dim_head
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm_kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.heads = heads
        self.qk_norm = qk_norm is not None
        self.context_out = context and not context_pre_only
        self.to_q = dense(dim, inner, ("embed", "heads"), **kw)
        self.to_k = dense(dim, inner, ("embed", "heads"), **kw)
        self.to_v = dense(dim, inner, ("embed", "heads"), **kw)
        self.to_out = nnx.List([dense(inner, dim, ("heads", "embed"), **kw)])
        if self.qk_norm:
            self.norm_q, self.norm_k = RMSNorm(dim_head, **norm_kw), RMSNorm(dim_head, **norm_kw)
        if context:
            self.add_q_proj = dense(dim, inner, ("embed", "heads"), **kw)
            self.add_k_proj = dense(dim, inner, ("embed", "heads"), **kw)
            self.add_v_proj = dense(dim, inner, ("embed", "heads"), **kw)
            if self.qk_norm:
                self.norm_added_q = RMSNorm(dim_head, **norm_kw)
                self.norm_added_k = RMSNorm(dim_head, **norm_kw)
        if self.context_out:
            self.to_add_out = dense(inner, dim, ("heads", "embed"), **kw)

    def _heads(self, x: jax.Array) -> jax.Array:
        """[B, N, H * Dh] -> [B, N, H, Dh]."""
        return x.reshape(*x.shape[:2], self.heads, -1)

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        """x [B, N, D], context [B, T, D] or None -> (x [B, N, D], context [B, T, D], or None
        without context or with `context_pre_only`)."""
        q, k, v = (self._heads(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        if self.qk_norm:
            q, k = self.norm_q(q), self.norm_k(k)
        if context is not None:
            cq, ck, cv = (
                self._heads(proj(context))
                for proj in (self.add_q_proj, self.add_k_proj, self.add_v_proj)
            )
            if self.qk_norm:
                cq, ck = self.norm_added_q(cq), self.norm_added_k(ck)
            q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((q, cq), (k, ck), (v, cv)))
        out = attention(q, k, v)  # [B, N + T, H, Dh]
        out = out.reshape(*out.shape[:2], -1)  # [B, N + T, H * Dh]
        n = x.shape[1]
        context_out = self.to_add_out(out[:, n:]) if self.context_out else None
        return self.to_out[0](out[:, :n]), context_out


class JointTransformerBlock(nnx.Module):
    """diffusers `JointTransformerBlock`: adaLN-Zero on the image tokens (`norm1`) and on the
    text tokens (`norm1_context`; a plain adaptive norm in the last block, whose text tokens go
    no further), the joint attention, gated, then each stream's own feed-forward (tanh GELU),
    modulated and gated. With `dual_attention`, a second, image-only attention (`attn2`) with
    its own modulation."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        *,
        context_pre_only: bool,
        qk_norm: str | None,
        dual_attention: bool,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm_kw = dict(elementwise_affine=False, dtype=dtype, param_dtype=param_dtype)
        self.context_pre_only = context_pre_only
        self.dual_attention = dual_attention
        self.norm1 = AdaLayerNormZero(dim, chunks=9 if dual_attention else 6, **kw)
        self.norm1_context = (
            AdaLayerNormContinuous(dim, **kw) if context_pre_only else AdaLayerNormZero(dim, **kw)
        )
        attn_kw = dict(qk_norm=qk_norm, **kw)
        self.attn = JointAttention(
            dim, heads, dim_head, context=True, context_pre_only=context_pre_only, **attn_kw
        )
        if dual_attention:
            self.attn2 = JointAttention(dim, heads, dim_head, context=False, **attn_kw)
        self.norm2 = LayerNorm(dim, 1e-6, **norm_kw)
        self.ff = FeedForward(dim, activation_fn="gelu-approximate", **kw)
        if not context_pre_only:
            self.norm2_context = LayerNorm(dim, 1e-6, **norm_kw)
            self.ff_context = FeedForward(dim, activation_fn="gelu-approximate", **kw)

    def __call__(
        self, x: jax.Array, context: jax.Array, conditioning: jax.Array
    ) -> tuple[jax.Array, jax.Array | None]:
        """x [B, N, D], context [B, T, D], conditioning [B, D] -> (x [B, N, D], context
        [B, T, D], or None after the last block)."""
        h, (gate_msa, shift_mlp, scale_mlp, gate_mlp, *second) = self.norm1(x, conditioning)
        if self.context_pre_only:
            c = self.norm1_context(context, conditioning)
        else:
            c, (c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(
                context, conditioning
            )
        attn_out, context_attn_out = self.attn(h, c)
        x = x + gate_msa * attn_out
        if self.dual_attention:
            h2, gate_msa2 = second
            x = x + gate_msa2 * self.attn2(h2)[0]
        x = x + gate_mlp * self.ff(self.norm2(x) * (1 + scale_mlp) + shift_mlp)
        if self.context_pre_only:
            return x, None
        context = context + c_gate_msa * context_attn_out
        c = self.norm2_context(context) * (1 + c_scale_mlp) + c_shift_mlp
        return x, context + c_gate_mlp * self.ff_context(c)


class MMDiT(nnx.Module):
    """Text-conditioned MMDiT, diffusers `SD3Transformer2DModel` on NHWC tensors.

    Args:
      sample_size: the latent size the model was trained at (the positions are scaled to it).
      patch_size: a token's patch edge; the input's height and width must be multiples of it.
      in_channels, out_channels: latent channels in and predicted (None: as the input).
      num_layers: joint transformer blocks.
      attention_head_dim, num_attention_heads: heads of each attention and their width (the
        model's width is their product).
      joint_attention_dim: width of the text encoder's hidden states.
      caption_projection_dim: width they are projected to (must equal the model's width).
      pooled_projection_dim: width of the pooled text embedding.
      pos_embed_max_size: side of the position table's grid, in patches.
      dual_attention_layers: blocks with a second, image-only attention (SD3.5 Medium: 0-12).
      qk_norm: None, or "rms_norm" (SD3.5) for queries and keys.
      remat: recompute each block's activations in the backward pass instead of keeping them.
      dtype, param_dtype: compute and parameter dtypes; norms and softmax compute in float32.
    """

    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int | None = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        remat: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        dual_attention_layers = tuple(dual_attention_layers)
        self.architecture = architecture(locals())
        dim = num_attention_heads * attention_head_dim
        if patch_size < 1 or sample_size % patch_size:
            raise UserError(
                f"patch_size={patch_size} does not divide sample_size={sample_size}; accepted: "
                "a positive divisor"
            )
        if dim % 4:
            raise UserError(
                f"an MMDiT {dim} wide (num_attention_heads x attention_head_dim); accepted: a "
                "multiple of 4 (its 2-D positions take a quarter each)"
            )
        if caption_projection_dim != dim:
            raise UserError(
                f"caption_projection_dim={caption_projection_dim}; accepted: the model's width "
                f"{dim} (num_attention_heads x attention_head_dim), which the text tokens share"
            )
        if qk_norm not in QK_NORMS:
            raise UserError(f"qk_norm={qk_norm!r}; accepted: None, 'rms_norm'")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise UserError(f"num_layers={num_layers!r}; accepted: a positive integer")
        outside = [i for i in dual_attention_layers if not 0 <= i < num_layers]
        if outside:
            raise UserError(
                f"dual_attention_layers has {outside[0]}; accepted: block indices 0 to "
                f"{num_layers - 1}"
            )
        if pos_embed_max_size < sample_size // patch_size:
            raise UserError(
                f"pos_embed_max_size={pos_embed_max_size} is smaller than the trained grid of "
                f"{sample_size // patch_size} patches; accepted: at least that"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.remat = remat
        self.patch_size = patch_size
        self.out_channels = in_channels if out_channels is None else out_channels
        self.pos_embed = CroppedPatchEmbed(
            sample_size, patch_size, in_channels, dim, pos_embed_max_size, **kw
        )
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, pooled_projection_dim, **kw)
        self.context_embedder = dense(joint_attention_dim, dim, ("embed", "heads"), **kw)
        self.transformer_blocks = nnx.List(
            [
                JointTransformerBlock(
                    dim,
                    num_attention_heads,
                    attention_head_dim,
                    context_pre_only=i == num_layers - 1,
                    qk_norm=qk_norm,
                    dual_attention=i in dual_attention_layers,
                    **kw,
                )
                for i in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, **kw)
        patch_features = patch_size * patch_size * self.out_channels
        self.proj_out = dense(dim, patch_features, ("embed", None), zero_init=True, **kw)

    def __call__(
        self, x: jax.Array, timesteps: jax.Array, context: jax.Array, pooled: jax.Array
    ) -> jax.Array:
        """x [B, H, W, C], timesteps [B] (or a scalar; SD3 takes 1000 t), context [B, T,
        joint_attention_dim], pooled [B, pooled_projection_dim] -> [B, H, W, out_channels]."""
        b, height, width, _ = x.shape
        check_patches(height, width, self.patch_size, "MMDiT")
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        h = constrain(self.pos_embed(x.astype(self.dtype)), TOKENS)  # [B, N, D]
        conditioning = self.time_text_embed(timesteps, pooled)  # [B, D]
        c = constrain(self.context_embedder(context.astype(self.dtype)), TOKENS)  # [B, T, D]
        run = block_runner(self.remat)
        for block in self.transformer_blocks:
            h, c = run(block, h, c, conditioning)
            h, c = constrain(h, TOKENS), (c if c is None else constrain(c, TOKENS))
        h = self.proj_out(self.norm_out(h, conditioning))  # [B, N, p * p * Cout]
        return unpatchify(h, height, width, self.patch_size)


MMDIT_PRESETS: dict[str, dict] = {
    "SD3-Medium": dict(
        num_layers=24,
        num_attention_heads=24,
        caption_projection_dim=1536,
        pos_embed_max_size=192,
    ),
    "SD3.5-Medium": dict(
        num_layers=24,
        num_attention_heads=24,
        caption_projection_dim=1536,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    ),
    "SD3.5-Large": dict(
        num_layers=38,
        num_attention_heads=38,
        caption_projection_dim=2432,
        pos_embed_max_size=192,
        qk_norm="rms_norm",
    ),
}
"""The released SD3 transformers' configs (the other options at their defaults: 16 latent
channels, patch 2, sample size 128, 4096-wide T5 / CLIP hidden states, 2048-wide pooled
embedding)."""
