"""CLIP score (Hessel et al. 2021): how well images match their captions, by a converted CLIP.

The score of an image I and its caption C is `w * max(cos(E_I, E_C), 0)` with E_I, E_C the
projected CLIP image and text embeddings (Radford et al. 2021). Hessel et al. use w = 2.5; this
module uses torchmetrics' scale (the number diffusion papers report): w = 100, so scores lie in
[0, 100]. Unlike torchmetrics, which clamps the batch mean of `100 cos` at 0, `clip_score`
returns one score per image, each clamped (their mean is >= torchmetrics' when some cosines are
negative, equal otherwise).

    clip = load_clip("openai/clip-vit-base-patch32")        # a transformers CLIPModel folder
    tokenizer = load_clip_tokenizer("openai/clip-vit-base-patch32")
    scores = clip_score(clip.text_encoder, clip.vision_encoder, tokenizer, images, captions)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from jaxdiff.convert.components import build_model, read_component_config
from jaxdiff.convert.name_tables import load_into
from jaxdiff.convert.transformers_clip import (
    CLIP_TABLE,
    CLIP_VISION_TABLE,
    clip_model_arguments,
)
from jaxdiff.convert.weight_files import read_weights
from jaxdiff.errors import UserError, first_line
from jaxdiff.models.clip_text import CLIPTextTransformer
from jaxdiff.models.clip_vision import CLIPVisionTransformer, preprocess
from jaxdiff.pipelines.prompts import tokenize

CLIP_SCORE_WEIGHT = 100.0
"""torchmetrics' `CLIPScore` scale w (Hessel et al. 2021 use 2.5 for their CLIP-S)."""


class CLIP(NamedTuple):
    """A transformers `CLIPModel` as its two towers.

    `logit_scale` is the model's parameter as stored (a log): `CLIPModel`'s logits are
    `exp(logit_scale) * cos(E_I, E_C)`.
    """

    text_encoder: CLIPTextTransformer
    vision_encoder: CLIPVisionTransformer
    logit_scale: float


def load_clip(
    folder: str | Path,
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    variant: str | None = None,
) -> CLIP:
    """The text and image encoders of a transformers `CLIPModel` folder (config.json with
    `text_config` / `vision_config`, weights `text_model.*`, `text_projection.weight`,
    `vision_model.*`, `visual_projection.weight`, `logit_scale`), weights loaded through the
    same name tables as `CLIPTextModelWithProjection` / `CLIPVisionModelWithProjection`."""
    directory = Path(folder)
    source = str(directory)
    config = read_component_config(directory)
    architectures = config.get("architectures")
    name = architectures[0] if isinstance(architectures, list) and architectures else None
    if name != "CLIPModel":
        raise UserError(
            f"{source} holds a {name!r} model (architectures[0]); accepted: a transformers "
            "CLIPModel folder"
        )
    text_arguments, vision_arguments = clip_model_arguments(config, source)
    text = build_model(CLIPTextTransformer, text_arguments, source, dtype, param_dtype)
    vision = build_model(CLIPVisionTransformer, vision_arguments, source, dtype, param_dtype)
    tensors = read_weights(directory, variant)
    towers: dict[str, dict[str, np.ndarray]] = {"text": {}, "vision": {}, "other": {}}
    for key, value in tensors.items():
        if key.startswith(("text_model.", "text_projection.")):
            towers["text"][key] = value
        elif key.startswith(("vision_model.", "visual_projection.")):
            towers["vision"][key] = value
        elif key != "logit_scale":
            towers["other"][key] = value
    parts = []
    if "logit_scale" not in tensors:
        parts.append("missing key: logit_scale")
    if towers["other"]:
        parts.append(f"unexpected keys: {', '.join(sorted(towers['other']))}")
    if parts:
        raise UserError(f"{source} does not fit a CLIPModel: {'; '.join(parts)}")
    load_into(CLIP_TABLE, towers["text"], text, source)
    load_into(CLIP_VISION_TABLE, towers["vision"], vision, source)
    return CLIP(text, vision, float(np.asarray(tensors["logit_scale"], np.float32)))


def load_clip_tokenizer(folder: str | Path) -> Any:
    """The transformers tokenizer saved in a CLIP model folder (a `CLIPTokenizer` for OpenAI
    CLIP: vocab.json, merges.txt, tokenizer_config.json)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"{folder}: no usable tokenizer ({first_line(error)}); accepted: a folder with a "
            "transformers CLIP tokenizer (vocab.json, merges.txt, tokenizer_config.json)"
        ) from None


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine of a [B, P] and b [B, P] -> [B], in float32."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    return jnp.sum(a * b, axis=-1)


def clip_score_from_ids(
    text_encoder: CLIPTextTransformer,
    vision_encoder: CLIPVisionTransformer,
    input_ids: jax.Array,
    images: jax.Array,
    weight: float = CLIP_SCORE_WEIGHT,
) -> jax.Array:
    """The jit-able core of `clip_score`: input_ids [B, T], images [B, H, W, 3] in [0, 1] ->
    per-image scores [B] = weight * max(cos(E_I, E_C), 0) (Hessel et al. 2021)."""
    text_embeds = text_encoder(input_ids).text_embeds  # [B, P]
    pixels = preprocess(images, vision_encoder.image_size)  # [B, S, S, 3]
    image_embeds = vision_encoder(pixels).image_embeds  # [B, P]
    return scores_of_embeddings(image_embeds, text_embeds, weight)


def scores_of_embeddings(
    image_embeds: jax.Array, text_embeds: jax.Array, weight: float = CLIP_SCORE_WEIGHT
) -> jax.Array:
    """`weight * max(cos(E_I, E_C), 0)` of image and caption embeddings [B, P] -> [B]."""
    return weight * jnp.maximum(cosine_similarity(image_embeds, text_embeds), 0.0)


_compiled_scores = nnx.jit(clip_score_from_ids)


def _check_encoders(text_encoder: CLIPTextTransformer, vision_encoder: CLIPVisionTransformer):
    if text_encoder.text_projection is None:
        raise UserError(
            "the text encoder has no text_projection; accepted: a CLIPModel's text tower or a "
            "CLIPTextModelWithProjection"
        )
    text_dim = text_encoder.text_projection.kernel.shape[-1]
    image_dim = vision_encoder.visual_projection.kernel.shape[-1]
    if text_dim != image_dim:
        raise UserError(
            f"text embeddings of width {text_dim} and image embeddings of width {image_dim}; "
            "accepted: the two towers of one CLIP model"
        )


def _check_count(num_captions: int, num_images: int) -> None:
    if num_captions != num_images:
        raise UserError(
            f"{num_captions} captions for {num_images} images; accepted: one caption per image"
        )


def clip_score(
    text_encoder: CLIPTextTransformer,
    vision_encoder: CLIPVisionTransformer,
    tokenizer: Any,
    images: ArrayLike,
    captions: Sequence[str] | ArrayLike,
    *,
    weight: float = CLIP_SCORE_WEIGHT,
) -> jax.Array:
    """CLIP score of each image against its caption (Hessel et al. 2021), torchmetrics' scale.

    Args:
      text_encoder, vision_encoder: the two towers of one CLIP model (`load_clip`).
      tokenizer: the model's transformers tokenizer (`load_clip_tokenizer`); may be None when
        `captions` are token ids.
      images: [B, H, W, 3] RGB floats in [0, 1], any size: resized (shortest side), centre-cropped
        and normalized as CLIP's image processor does (`preprocess`).
      captions: B strings, tokenized with padding to the text encoder's context length (77) and
        truncation; or token ids [B, T].
      weight: w in `w * max(cos, 0)`: 100 as torchmetrics' `CLIPScore` (scores in [0, 100]);
        2.5 gives Hessel et al.'s CLIP-S.

    Returns:
      scores [B] float32. The computation after tokenization is one compiled program
      (`clip_score_from_ids` under `nnx.jit`).
    """
    _check_encoders(text_encoder, vision_encoder)
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(
            f"images of shape {tuple(images.shape)}; accepted: [B, H, W, 3] RGB in [0, 1]"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise UserError(
            f"images of dtype {images.dtype}; accepted: floats in [0, 1] (divide uint8 by 255)"
        )
    low, high = float(jnp.min(images)), float(jnp.max(images))
    if low < -1e-3 or high > 1 + 1e-3:
        raise UserError(
            f"image values in [{low:.3g}, {high:.3g}]; accepted: [0, 1] (map [-1, 1] images "
            "with (x + 1) / 2)"
        )
    if isinstance(captions, str):
        raise UserError(f"captions is the single string {captions!r}; accepted: one per image")
    if isinstance(captions, Sequence) and all(isinstance(c, str) for c in captions):
        _check_count(len(captions), images.shape[0])
        if tokenizer is None:
            raise UserError("captions given as strings but no tokenizer; accepted: a tokenizer")
        input_ids = tokenize(tokenizer, captions, text_encoder.max_position_embeddings, warn=False)
    else:
        input_ids = np.asarray(captions)
        if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
            raise UserError(
                f"captions of shape {input_ids.shape} and dtype {input_ids.dtype}; accepted: "
                "a list of strings or token ids [B, T]"
            )
        _check_count(len(input_ids), images.shape[0])
    return _compiled_scores(text_encoder, vision_encoder, jnp.asarray(input_ids), images, weight)


class CLIPImageFeatures(nnx.Module):
    """CLIP's image tower behind its preprocessing: images `[B, H, W, 3]` in [0, 1] -> projected
    embeddings `[B, P]`, a feature space for FID / KID (`jaxdiff.evaluation.features`)."""

    def __init__(self, vision_encoder: CLIPVisionTransformer):
        self.vision_encoder = vision_encoder

    def __call__(self, images: jax.Array) -> jax.Array:
        pixels = preprocess(images, self.vision_encoder.image_size)  # [B, S, S, 3]
        return self.vision_encoder(pixels).image_embeds


def clip_image_extractor(clip: CLIP, batch_size: int = 64):
    """A `FeatureExtractor` of the CLIP image embeddings of a `load_clip` model."""
    from jaxdiff.evaluation.features import FeatureExtractor

    return FeatureExtractor(CLIPImageFeatures(clip.vision_encoder), "clip", batch_size=batch_size)


class CLIPTextFeatures(nnx.Module):
    """CLIP's text tower: token ids `[B, T]` -> projected embeddings `[B, P]`."""

    def __init__(self, text_encoder: CLIPTextTransformer):
        self.text_encoder = text_encoder

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        return self.text_encoder(input_ids).text_embeds


def clip_scorer(clip: CLIP, tokenizer: Any, batch_size: int = 64, image_features=None):
    """``score(images, captions, image_embeds=None) -> [N]``: the CLIP score of uint8 images
    `[N, H, W, 3]` with their captions (as `clip_score`), each tower run in batches split over
    the devices. ``image_features``: the model's `clip_image_extractor`, when one is already
    built; ``image_embeds``: its output `[N, P]` for these images, when already computed."""
    from jaxdiff.evaluation.features import FeatureExtractor

    _check_encoders(clip.text_encoder, clip.vision_encoder)
    images_of = image_features or clip_image_extractor(clip, batch_size)
    text = CLIPTextFeatures(clip.text_encoder)
    texts_of = FeatureExtractor(text, "clip-text", batch_size=batch_size)
    length = clip.text_encoder.max_position_embeddings

    def score(
        images: np.ndarray, captions: Sequence[str], image_embeds: np.ndarray | None = None
    ) -> np.ndarray:
        _check_count(len(captions), len(images))
        ids = tokenize(tokenizer, list(captions), length, warn=False)  # [N, T]
        embeds = images_of(images) if image_embeds is None else image_embeds  # [N, P]
        return np.asarray(
            scores_of_embeddings(jnp.asarray(embeds), jnp.asarray(texts_of.rows(ids)))
        )

    return score
