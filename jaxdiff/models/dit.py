"""DiT, the class-conditional diffusion transformer (Peebles & Xie 2023), as diffusers'
`DiTTransformer2DModel` on NHWC tensors.

The latent is cut into patch_size x patch_size patches, embedded (`pos_embed`: a strided
convolution plus fixed 2-D sine-cosine positions), and run through `transformer_blocks`, each
modulated by adaLN-Zero: a time + class embedding predicts a shift, scale and gate for the
attention and for the feed-forward. A last adaptive norm and linear layer (`proj_out_1`,
`proj_out_2`) turn each token back into its patch.

diffusers gives every block its own time and class embedders (`norm1.emb`), all equal in the
published checkpoints, and the output layer uses the first block's; jaxdiff keeps that tree so a
checkpoint converts name for name. The paper's count (675 M for DiT-XL/2) has the embedders once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.attention import Attention, FeedForward
from jaxdiff.models.embeddings import TimestepEmbedding, Timesteps
from jaxdiff.models.layers import (
    TOKENS,
    LayerNorm,
    architecture,
    block_runner,
    constrain,
    conv2d,
    dense,
    partitioned,
)

TIME_CHANNELS = 256  # width of the sinusoidal time projection (diffusers' fixed value)


def sincos_positions(dim: int, height: int, width: int, base_size: int) -> np.ndarray:
    """diffusers `get_2d_sincos_pos_embed` of a height x width grid: [H * W, dim] float32, the
    tokens in row-major order; the first half of each row encodes the column, the second the
    row, each a [sin, cos] embedding of its coordinate scaled to `base_size` cells."""
    rows = np.arange(height, dtype=np.float32) / np.float32(height / base_size)
    cols = np.arange(width, dtype=np.float32) / np.float32(width / base_size)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # [dim / 4]

    def embed(position: np.ndarray) -> np.ndarray:  # [H * W] -> [H * W, dim / 2]
        angles = np.outer(position.astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    col_grid, row_grid = np.meshgrid(cols, rows)  # each [H, W]
    return np.concatenate([embed(col_grid.ravel()), embed(row_grid.ravel())], 1).astype(np.float32)


def check_patches(height: int, width: int, patch_size: int, model: str) -> None:
    """A one-line error unless the input's height and width are multiples of the patch size."""
    if height % patch_size or width % patch_size:
        raise UserError(
            f"a {height}x{width} input to a {model} of patch size {patch_size}; accepted: height "
            f"and width multiples of {patch_size}"
        )


def unpatchify(tokens: jax.Array, height: int, width: int, patch_size: int) -> jax.Array:
    """Tokens [B, H/p * W/p, p * p * C] (row-major patches, each row-major) -> [B, H, W, C]."""
    b, p = tokens.shape[0], patch_size
    h = tokens.reshape(b, height // p, width // p, p, p, -1)
    return h.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, h.shape[-1])


class PatchEmbed(nnx.Module):
    """diffusers `PatchEmbed` with sine-cosine positions: `proj`, a patch_size-strided convolution,
    plus the position of each patch (computed for the input's grid, scaled to the grid the model
    was trained on, `sample_size // patch_size` cells)."""

    def __init__(
        self,
        sample_size: int,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.base_size = sample_size // patch_size
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

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> tokens [B, H/p * W/p, D]."""
        h = self.proj(x)  # [B, H/p, W/p, D]
        b, rows, cols, dim = h.shape
        positions = sincos_positions(dim, rows, cols, self.base_size)
        return (h.reshape(b, rows * cols, dim) + positions).astype(h.dtype)


class LabelEmbedding(nnx.Module):
    """diffusers `LabelEmbedding`: `embedding_table` of `num_classes` rows plus one, the null
    class (label `num_classes`): the unconditional branch of classifier-free guidance, which a
    model learns from the labels its training replaces with it."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.embedding_table = nnx.Embed(
            num_classes + 1,
            dim,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=partitioned(nnx.initializers.normal(0.02), ("vocab", "embed")),
            rngs=rngs,
        )

    def __call__(self, labels: jax.Array) -> jax.Array:
        """labels [B] int in [0, num_classes] -> [B, dim]."""
        return self.embedding_table(labels)


class CombinedTimestepLabelEmbeddings(nnx.Module):
    """diffusers `CombinedTimestepLabelEmbeddings`: the time embedding (sinusoidal, 256 wide,
    cos first, frequency shift 1, then an MLP) plus the class embedding."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.time_proj = Timesteps(TIME_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.timestep_embedder = TimestepEmbedding(TIME_CHANNELS, dim, **kw)
        self.class_embedder = LabelEmbedding(num_classes, dim, **kw)

    def __call__(self, timesteps: jax.Array, labels: jax.Array) -> jax.Array:
        """timesteps [B], labels [B] -> [B, dim]."""
        time = self.timestep_embedder(self.time_proj(timesteps).astype(self.dtype))
        return time + self.class_embedder(labels)


class AdaLayerNormZero(nnx.Module):
    """diffusers `AdaLayerNormZero` (and, with 9 chunks, SD3.5's `SD35AdaLayerNormZeroX`): from
    the conditioning, `linear` predicts the attention's shift, scale and gate and the
    feed-forward's (and a second attention's); the attention's input is normalized (no
    parameters, eps 1e-6) and modulated. The linear layer starts at zero (adaLN-Zero: each block
    starts as the identity). With `num_classes`, `emb` is the DiT's own time + class embedder,
    which gives the conditioning."""

    def __init__(
        self,
        dim: int,
        num_classes: int | None = None,
        *,
        chunks: int = 6,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if num_classes is not None:
            self.emb = CombinedTimestepLabelEmbeddings(num_classes, dim, **kw)
        self.chunks = chunks
        self.linear = dense(dim, chunks * dim, ("embed", "mlp"), zero_init=True, **kw)
        self.norm = LayerNorm(
            dim, 1e-6, elementwise_affine=False, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(
        self, x: jax.Array, conditioning: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """x [B, N, D], conditioning [B, D] -> (modulated norm of x [B, N, D], (gate_msa,
        shift_mlp, scale_mlp, gate_mlp), each [B, 1, D]; with 9 chunks also the second
        attention's modulated norm of x [B, N, D] and its gate)."""
        emb = self.linear(jax.nn.silu(conditioning))[:, None]  # [B, 1, chunks * D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, *second = jnp.split(
            emb, self.chunks, -1
        )
        normed = self.norm(x)
        rest = (gate_msa, shift_mlp, scale_mlp, gate_mlp)
        if second:
            shift_msa2, scale_msa2, gate_msa2 = second
            rest += (normed * (1 + scale_msa2) + shift_msa2, gate_msa2)
        return normed * (1 + scale_msa) + shift_msa, rest


class DiTBlock(nnx.Module):
    """diffusers `BasicTransformerBlock` with `norm_type="ada_norm_zero"` and no cross-attention:
    `norm1` (adaLN-Zero) -> `attn1` self-attention, gated; `norm3` modulated -> `ff`, gated."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        num_classes: int,
        *,
        activation_fn: str,
        attention_bias: bool,
        upcast_attention: bool,
        norm_elementwise_affine: bool,
        norm_eps: float,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = AdaLayerNormZero(dim, num_classes, **kw)
        self.attn1 = Attention(
            dim,
            None,
            heads,
            dim_head,
            qkv_bias=attention_bias,
            upcast_attention=upcast_attention,
            **kw,
        )
        self.norm3 = LayerNorm(
            dim,
            norm_eps,
            elementwise_affine=norm_elementwise_affine,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.ff = FeedForward(dim, activation_fn=activation_fn, **kw)

    def __call__(self, x: jax.Array, timesteps: jax.Array, labels: jax.Array) -> jax.Array:
        """x [B, N, dim], timesteps [B], labels [B] -> [B, N, dim]."""
        conditioning = self.norm1.emb(timesteps, labels)  # [B, dim]
        h, (gate_msa, shift_mlp, scale_mlp, gate_mlp) = self.norm1(x, conditioning)
        x = x + gate_msa * self.attn1(h)
        h = self.norm3(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(h)


class DiT(nnx.Module):
    """Class-conditional diffusion transformer, diffusers `DiTTransformer2DModel` on NHWC tensors.

    Args:
      num_attention_heads, attention_head_dim: heads of each attention and their width (the
        model's width is their product).
      in_channels, out_channels: channels of the input and of the prediction (None: as the input;
        twice the input for the learned-variance models, the noise first).
      num_layers: transformer blocks.
      sample_size: the latent size the model was trained at, which the positions are scaled to.
      patch_size: a token's patch edge; the input's height and width must be multiples of it.
      num_embeds_ada_norm: the number of classes (label `num_embeds_ada_norm` is the null class).
      activation_fn: the feed-forward's (`FEED_FORWARD_ACTIVATIONS`).
      attention_bias: query / key / value projections have a bias.
      upcast_attention: attention products in float32.
      norm_elementwise_affine, norm_eps: the feed-forward's norm.
      remat: recompute each block's activations in the backward pass instead of keeping them.
      dtype, param_dtype: compute and parameter dtypes; norms and softmax compute in float32.
    """

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_layers: int = 28,
        sample_size: int = 32,
        patch_size: int = 2,
        num_embeds_ada_norm: int = 1000,
        activation_fn: str = "gelu-approximate",
        attention_bias: bool = True,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
        remat: bool = False,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture(locals())
        if patch_size < 1 or sample_size % patch_size:
            raise UserError(
                f"patch_size={patch_size} does not divide sample_size={sample_size}; accepted: "
                "a positive divisor"
            )
        dim = num_attention_heads * attention_head_dim
        if dim % 4:
            raise UserError(
                f"a DiT {dim} wide (num_attention_heads x attention_head_dim); accepted: a "
                "multiple of 4 (its 2-D positions take a quarter each)"
            )
        for name, value in (
            ("num_layers", num_layers),
            ("num_embeds_ada_norm", num_embeds_ada_norm),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name}={value!r}; accepted: a positive integer")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.remat = remat
        self.patch_size = patch_size
        self.out_channels = in_channels if out_channels is None else out_channels
        self.num_classes = num_embeds_ada_norm
        self.pos_embed = PatchEmbed(sample_size, patch_size, in_channels, dim, **kw)
        self.transformer_blocks = nnx.List(
            [
                DiTBlock(
                    dim,
                    num_attention_heads,
                    attention_head_dim,
                    num_embeds_ada_norm,
                    activation_fn=activation_fn,
                    attention_bias=attention_bias,
                    upcast_attention=upcast_attention,
                    norm_elementwise_affine=norm_elementwise_affine,
                    norm_eps=norm_eps,
                    **kw,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = LayerNorm(
            dim, 1e-6, elementwise_affine=False, dtype=dtype, param_dtype=param_dtype
        )
        self.proj_out_1 = dense(dim, 2 * dim, ("embed", "mlp"), zero_init=True, **kw)
        patch_features = patch_size * patch_size * self.out_channels
        self.proj_out_2 = dense(dim, patch_features, ("embed", None), zero_init=True, **kw)

    def __call__(self, x: jax.Array, timesteps: jax.Array, class_labels: jax.Array) -> jax.Array:
        """x [B, H, W, C], timesteps [B] (or a scalar), class_labels [B] int (`num_classes`: the
        null class) -> [B, H, W, out_channels]."""
        b, height, width, _ = x.shape
        p = self.patch_size
        check_patches(height, width, p, "DiT")
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        h = constrain(self.pos_embed(x.astype(self.dtype)), TOKENS)  # [B, N, D]
        run = block_runner(self.remat)
        for block in self.transformer_blocks:
            h = constrain(run(block, h, timesteps, class_labels), TOKENS)
        conditioning = self.transformer_blocks[0].norm1.emb(timesteps, class_labels)  # [B, D]
        shift, scale = jnp.split(self.proj_out_1(jax.nn.silu(conditioning))[:, None], 2, -1)
        h = self.proj_out_2(self.norm_out(h) * (1 + scale) + shift)  # [B, N, p * p * Cout]
        return unpatchify(h, height, width, p)


DIT_PRESETS: dict[str, dict] = {
    f"DiT-{size}/{patch}": dict(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        num_layers=depth,
        patch_size=patch,
    )
    for size, (depth, width, heads) in {
        "S": (12, 384, 6),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }.items()
    for patch in (2, 4, 8)
}
"""The paper's sizes (Table 1), `DiT(**DIT_PRESETS["DiT-XL/2"], out_channels=8, ...)` for the
released learned-variance ImageNet models."""
