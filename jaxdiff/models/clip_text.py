"""The CLIP text encoder (Radford et al. 2021), in Flax NNX.

Same module tree, attribute names and math as transformers' `CLIPTextModel` /
`CLIPTextModelWithProjection`: token + learned position embeddings, pre-LayerNorm causal transformer
layers, a final LayerNorm, the pooled output at the end-of-text token, and an optional bias-free
`text_projection`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.attention import attention
from jaxdiff.models.layers import LayerNorm, architecture, dense, partitioned

HIDDEN_ACTS = ("quick_gelu", "gelu")


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's sigmoid approximation of gelu: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


class CLIPTextOutput(NamedTuple):
    """last_hidden_state [B, T, D], pooled_output [B, D], text_embeds [B, P] (None without a
    projection)."""

    last_hidden_state: jax.Array
    pooled_output: jax.Array
    text_embeds: jax.Array | None


class CLIPTextEmbeddings(nnx.Module):
    """transformers `CLIPTextEmbeddings`: `token_embedding` + `position_embedding`."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.normal(0.02)
        self.token_embedding = nnx.Embed(
            vocab_size,
            hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=partitioned(init, ("vocab", "embed")),
            rngs=rngs,
        )
        self.position_embedding = nnx.Embed(
            max_position_embeddings,
            hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=partitioned(init, (None, "embed")),
            rngs=rngs,
        )

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """input_ids [B, T] -> [B, T, D]."""
        positions = jnp.arange(input_ids.shape[-1])  # [T]
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nnx.Module):
    """transformers `CLIPAttention`: `q_proj`, `k_proj`, `v_proj`, `out_proj`; causal unless
    `causal=False` (the vision tower)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        causal: bool = True,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads
        self.causal = causal
        self.q_proj = dense(hidden_size, hidden_size, ("embed", "heads"), **kw)
        self.k_proj = dense(hidden_size, hidden_size, ("embed", "heads"), **kw)
        self.v_proj = dense(hidden_size, hidden_size, ("embed", "heads"), **kw)
        self.out_proj = dense(hidden_size, hidden_size, ("heads", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> [B, T, D]; causal: position i attends to positions <= i only."""
        b, t, _ = x.shape
        q, k, v = (
            p(x).reshape(b, t, self.num_heads, -1) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        return self.out_proj(attention(q, k, v, is_causal=self.causal).reshape(b, t, -1))


class CLIPMLP(nnx.Module):
    """transformers `CLIPMLP`: `fc1` -> activation -> `fc2`."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.hidden_act = hidden_act
        self.fc1 = dense(hidden_size, intermediate_size, ("embed", "mlp"), **kw)
        self.fc2 = dense(intermediate_size, hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> [B, T, D]."""
        h = self.fc1(x)
        h = quick_gelu(h) if self.hidden_act == "quick_gelu" else jax.nn.gelu(h, approximate=False)
        return self.fc2(h)


class CLIPEncoderLayer(nnx.Module):
    """transformers `CLIPEncoderLayer`: pre-norm `self_attn` and `mlp` residual sub-layers
    (causal self-attention unless `causal=False`)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        hidden_act: str,
        layer_norm_eps: float,
        *,
        causal: bool = True,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = CLIPAttention(hidden_size, num_heads, causal=causal, **kw)
        self.layer_norm1 = LayerNorm(
            hidden_size, layer_norm_eps, dtype=dtype, param_dtype=param_dtype
        )
        self.mlp = CLIPMLP(hidden_size, intermediate_size, hidden_act, **kw)
        self.layer_norm2 = LayerNorm(
            hidden_size, layer_norm_eps, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> [B, T, D]."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """transformers `CLIPEncoder`: the list `layers`."""

    def __init__(self, layers: list[CLIPEncoderLayer]):
        self.layers = nnx.List(layers)


class CLIPTextTransformer(nnx.Module):
    """CLIP text encoder, transformers `CLIPTextModel` (+ `text_projection` when `projection_dim`).

    Args:
      vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
      max_position_embeddings, layer_norm_eps: as in transformers' `CLIPTextConfig`.
      hidden_act: "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP, SD 2).
      eos_token_id: the pooled output is taken at the first position holding this id; with the
        legacy value 2 (old CLIP configs) it is taken at the largest token id instead, as
        transformers does.
      projection_dim: width of the bias-free `text_projection` of the pooled output, or None.
      dtype, param_dtype: compute and parameter dtypes; norms and softmax compute in float32.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        intermediate_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        max_position_embeddings: int,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        eos_token_id: int = 2,
        projection_dim: int | None = None,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture(locals())
        if hidden_act not in HIDDEN_ACTS:
            raise UserError(
                f"unknown hidden_act {hidden_act!r}; accepted: {', '.join(HIDDEN_ACTS)}"
            )
        if hidden_size % num_attention_heads:
            raise UserError(
                f"num_attention_heads={num_attention_heads} does not divide "
                f"hidden_size={hidden_size}; accepted: a divisor of hidden_size"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.eos_token_id = eos_token_id
        self.max_position_embeddings = max_position_embeddings
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_position_embeddings, **kw)
        self.encoder = CLIPEncoder(
            [
                CLIPEncoderLayer(
                    hidden_size,
                    intermediate_size,
                    num_attention_heads,
                    hidden_act,
                    layer_norm_eps,
                    **kw,
                )
                for _ in range(num_hidden_layers)
            ]
        )
        self.final_layer_norm = LayerNorm(
            hidden_size, layer_norm_eps, dtype=dtype, param_dtype=param_dtype
        )
        self.text_projection = (
            dense(hidden_size, projection_dim, ("embed", None), use_bias=False, **kw)
            if projection_dim is not None
            else None
        )

    def __call__(
        self, input_ids: jax.Array, skip_last_layers: int = 0, final_norm: bool = True
    ) -> CLIPTextOutput:
        """input_ids [B, T] (T <= max_position_embeddings) -> CLIPTextOutput.

        `skip_last_layers=k` ("clip skip") returns the hidden state after all but the last k
        layers, passed through the final layer norm, as diffusers' Stable Diffusion pipelines do
        for `clip_skip=k`; with `final_norm=False` without it, as SDXL's pipelines read
        transformers' `hidden_states[-(k + 1)]`. The pooled output and text embeddings always
        come from the full depth.
        """
        num_layers = len(self.encoder.layers)
        if not 0 <= skip_last_layers < num_layers:
            raise UserError(
                f"skip_last_layers={skip_last_layers}; accepted: 0 to {num_layers - 1} "
                f"(the encoder has {num_layers} layers)"
            )
        seq_len = input_ids.shape[-1]
        if seq_len > self.max_position_embeddings:
            raise UserError(
                f"token sequence of length {seq_len}; accepted: at most "
                f"{self.max_position_embeddings} (max_position_embeddings)"
            )
        h = self.embeddings(input_ids)  # [B, T, D]
        skipped = h
        for i, layer in enumerate(self.encoder.layers):
            h = layer(h)
            if i == num_layers - 1 - skip_last_layers:
                skipped = h
        final = self.final_layer_norm(h)  # [B, T, D]
        if not final_norm:
            last_hidden_state = skipped
        elif skip_last_layers == 0:
            last_hidden_state = final
        else:
            last_hidden_state = self.final_layer_norm(skipped)
        if self.eos_token_id == 2:
            eos_pos = jnp.argmax(input_ids, axis=-1)  # [B]
        else:
            eos_pos = jnp.argmax(input_ids == self.eos_token_id, axis=-1)  # [B], first match
        pooled = jnp.take_along_axis(final, eos_pos[:, None, None], axis=1)[:, 0]  # [B, D]
        text_embeds = self.text_projection(pooled) if self.text_projection is not None else None
        return CLIPTextOutput(last_hidden_state, pooled, text_embeds)


CLIP_TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests.
    "tiny": dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        eos_token_id=98,
    ),
    # The shapes demo with the word-level tokenizer (`jaxdiff.models.tokenizer` over the 28 words
    # of `jaxdiff.data.shapes.vocabulary()`: ids <pad> 0, <unk> 1, words, start 30, end 31).
    "shapes": dict(
        vocab_size=32,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        eos_token_id=31,
    ),
    # openai/clip-vit-large-patch14 text tower, the SD 1.x encoder (123,060,480 parameters).
    "clip_vit_l14": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        eos_token_id=2,
    ),
    # The SD 2.x text encoder: OpenCLIP ViT-H/14 text tower without its last layer.
    "openclip_vit_h14": dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        eos_token_id=2,
    ),
}
"""Named text-encoder sizes: `CLIPTextTransformer(**CLIP_TEXT_PRESETS[name], rngs=...)`."""
