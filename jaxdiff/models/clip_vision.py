"""The CLIP image encoder (Radford et al. 2021), a ViT (Dosovitskiy et al. 2021), in Flax NNX.

Same module tree, attribute names and math as transformers' `CLIPVisionModelWithProjection`:
a bias-free patch-embedding convolution, a learned class token and position embeddings,
`pre_layrnorm` (transformers' spelling), the text encoder's pre-LayerNorm transformer layers
without the causal mask, `post_layernorm` of the class token and the bias-free
`visual_projection`. `preprocess` does `CLIPImageProcessor`'s resize, crop and normalisation in
JAX. Layout is NHWC.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.clip_text import HIDDEN_ACTS, CLIPEncoder, CLIPEncoderLayer
from jaxdiff.models.layers import LayerNorm, architecture, dense, partitioned

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel RGB statistics CLIP's image processor normalizes with (`image_mean`, `image_std`)."""


class CLIPVisionOutput(NamedTuple):
    """image_embeds [B, P] (the projected, normed class token), last_hidden_state [B, 1 + N, D]
    (class token first, then the N patches in row-major order; not normed, as transformers)."""

    image_embeds: jax.Array
    last_hidden_state: jax.Array


def preprocess(images: jax.Array, image_size: int) -> jax.Array:
    """CLIP's image preprocessing: images [B, H, W, 3] in [0, 1] -> pixel values
    [B, image_size, image_size, 3].

    As transformers' `CLIPImageProcessor` (Radford et al. 2021): resize the shortest side to
    `image_size` (the longer to `int(image_size * long / short)`) with bicubic interpolation,
    crop the centre (offset `(size - image_size) // 2`), normalize with `OPENAI_CLIP_MEAN` /
    `OPENAI_CLIP_STD`. jit-able (shapes are static). Differences from the processor's PIL path:
    PIL resizes 8-bit images and rounds the result to uint8, here the float image is resized
    without rounding; both use the Keys cubic kernel (a = -0.5), widened by the scale factor
    when shrinking (antialiasing) and renormalised at the borders, so the two agree to about
    one 8-bit level. A resize to the same size is the identity.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(
            f"images of shape {tuple(images.shape)}; accepted: [B, H, W, 3] RGB in [0, 1]"
        )
    b, h, w, _ = images.shape
    short, long = min(h, w), max(h, w)
    new_long = int(image_size * long / short)
    new_h, new_w = (image_size, new_long) if h <= w else (new_long, image_size)
    x = images.astype(jnp.float32)
    if (new_h, new_w) != (h, w):
        x = jax.image.resize(x, (b, new_h, new_w, 3), method="bicubic", antialias=True)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    x = x[:, top : top + image_size, left : left + image_size]  # [B, S, S, 3]
    mean, std = jnp.asarray(OPENAI_CLIP_MEAN), jnp.asarray(OPENAI_CLIP_STD)
    return (x - mean) / std


class CLIPVisionEmbeddings(nnx.Module):
    """transformers `CLIPVisionEmbeddings`: `patch_embedding` (a bias-free conv with stride =
    kernel = patch size), `class_embedding` prepended, `position_embedding` added."""

    def __init__(
        self,
        hidden_size: int,
        image_size: int,
        patch_size: int,
        num_channels: int,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.num_positions = (image_size // patch_size) ** 2 + 1
        self.class_embedding = nnx.Param(
            partitioned(nnx.initializers.normal(hidden_size**-0.5), ("embed",))(
                rngs.params(), (hidden_size,), param_dtype
            )
        )
        # The 3 input channels are too few to shard; the output width is the token width.
        self.patch_embedding = nnx.Conv(
            num_channels,
            hidden_size,
            kernel_size=(patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), (None, None, None, "embed")),
            rngs=rngs,
        )
        self.position_embedding = nnx.Embed(
            self.num_positions,
            hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=partitioned(nnx.initializers.normal(0.02), (None, "embed")),
            rngs=rngs,
        )

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [B, H, W, C] -> tokens [B, 1 + (H/p)(W/p), D]."""
        patches = self.patch_embedding(pixel_values.astype(self.dtype))  # [B, H/p, W/p, D]
        b, d = patches.shape[0], patches.shape[-1]
        patches = patches.reshape(b, -1, d)  # [B, N, D], row-major as torch's flatten(2)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, d))
        tokens = jnp.concatenate([cls, patches], axis=1)  # [B, 1 + N, D]
        return tokens + self.position_embedding(jnp.arange(self.num_positions))[None]


class CLIPVisionTransformer(nnx.Module):
    """CLIP image encoder, transformers `CLIPVisionModelWithProjection` (Radford et al. 2021).

    Args:
      hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, image_size,
      patch_size, projection_dim, num_channels, layer_norm_eps: as in transformers'
        `CLIPVisionConfig`.
      hidden_act: "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP).
      dtype, param_dtype: compute and parameter dtypes; norms and softmax compute in float32.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        image_size: int,
        patch_size: int,
        projection_dim: int,
        num_channels: int = 3,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
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
        if image_size % patch_size:
            raise UserError(
                f"patch_size={patch_size} does not divide image_size={image_size}; accepted: a "
                "divisor of image_size"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm_kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.image_size = image_size
        self.num_channels = num_channels
        self.embeddings = CLIPVisionEmbeddings(
            hidden_size, image_size, patch_size, num_channels, **kw
        )
        self.pre_layrnorm = LayerNorm(hidden_size, layer_norm_eps, **norm_kw)
        self.encoder = CLIPEncoder(
            [
                CLIPEncoderLayer(
                    hidden_size,
                    intermediate_size,
                    num_attention_heads,
                    hidden_act,
                    layer_norm_eps,
                    causal=False,
                    **kw,
                )
                for _ in range(num_hidden_layers)
            ]
        )
        self.post_layernorm = LayerNorm(hidden_size, layer_norm_eps, **norm_kw)
        self.visual_projection = dense(
            hidden_size, projection_dim, ("embed", None), use_bias=False, **kw
        )

    def __call__(self, pixel_values: jax.Array) -> CLIPVisionOutput:
        """pixel_values [B, image_size, image_size, num_channels], already normalized (see
        `preprocess`) -> CLIPVisionOutput."""
        expected = (self.image_size, self.image_size, self.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise UserError(
                f"pixel values of shape {tuple(pixel_values.shape)}; accepted: [B, "
                f"{', '.join(map(str, expected))}] (resize and normalize with preprocess)"
            )
        h = self.pre_layrnorm(self.embeddings(pixel_values))  # [B, 1 + N, D]
        for layer in self.encoder.layers:
            h = layer(h)
        pooled = self.post_layernorm(h[:, 0])  # [B, D]
        return CLIPVisionOutput(self.visual_projection(pooled), h)


CLIP_VISION_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests.
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    ),
    # openai/clip-vit-base-patch32 image tower.
    "clip_vit_b32": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        projection_dim=512,
    ),
    # openai/clip-vit-large-patch14 image tower.
    "clip_vit_l14": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    ),
}
"""Named image-encoder sizes: `CLIPVisionTransformer(**CLIP_VISION_PRESETS[name], rngs=...)`."""
