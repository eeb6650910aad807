"""What SDXL's UNet is conditioned on besides the noisy latents, as diffusers' SDXL pipelines
compute it (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image
Synthesis"):

- the text context: each text encoder's hidden state before its last layer (`clip_skip` layers
  further down), without the final layer norm, concatenated along the features (CLIP ViT-L's 768
  and OpenCLIP bigG's 1280: 2048); the refiner has the second encoder only;
- `text_embeds`: the second encoder's projected pooled output;
- `time_ids`: the micro-conditioning numbers, `original_size + crops_coords_top_left +
  target_size` (the base), or `original_size + crops_coords_top_left + (aesthetic_score,)` (the
  refiner, `requires_aesthetics_score`).

With `force_zeros_for_empty_prompt` and no negative prompt, the negative branch of guidance sees
zeros for both, not the encoding of "". diffusers applies `clip_skip` to the prompts only: the
negative prompts' context is always the penultimate layer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.models.clip_text import CLIPTextTransformer


def encode_prompts(
    text_encoder: CLIPTextTransformer | None,
    text_encoder_2: CLIPTextTransformer,
    ids: jax.Array | None,
    ids_2: jax.Array,
    clip_skip: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Token ids `[B, T]` of each encoder's tokenizer (the first None for the refiner) -> (the
    text context `[B, T, D1 + D2]`, `text_embeds` `[B, P]`)."""
    skip = dict(skip_last_layers=1 + clip_skip, final_norm=False)
    second = text_encoder_2(ids_2, **skip)
    if second.text_embeds is None:
        raise UserError("text_encoder_2 has no text projection; SDXL's pooled text comes from it")
    hidden = [second.last_hidden_state]
    if text_encoder is not None:
        hidden.insert(0, text_encoder(ids, **skip).last_hidden_state)
    return jnp.concatenate(hidden, axis=-1), second.text_embeds


def size_pair(name: str, value: object) -> tuple[float, float]:
    """A micro-conditioning size or offset, (height, width) in pixels, checked: two numbers."""
    message = f"{name}={value!r}; accepted: two numbers (height, width)"
    if isinstance(value, str | bytes):
        raise UserError(message)
    try:
        pair = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserError(message) from None
    if len(pair) != 2 or not all(np.isfinite(pair)):
        raise UserError(message)
    return pair  # type: ignore[return-value]


def score(name: str, value: object) -> float:
    """An aesthetic score, checked: a finite number."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r}; accepted: a number") from None
    if not np.isfinite(number) or isinstance(value, bool):
        raise UserError(f"{name}={value!r}; accepted: a finite number")
    return number


def time_ids(
    original_size: Sequence[float],
    crops_coords_top_left: Sequence[float],
    target_size: Sequence[float] | None = None,
    aesthetic_score: float | None = None,
) -> np.ndarray:
    """The micro-conditioning `[6]` of the base (`target_size`) or `[5]` of the refiner
    (`aesthetic_score`), float32, in pixels."""
    if (target_size is None) == (aesthetic_score is None):
        raise UserError(
            "give target_size (SDXL's base) or aesthetic_score (its refiner), one of them"
        )
    numbers = [
        *size_pair("original_size", original_size),
        *size_pair("crops_coords_top_left", crops_coords_top_left),
    ]
    if target_size is not None:
        numbers += size_pair("target_size", target_size)
    else:
        numbers.append(score("aesthetic_score", aesthetic_score))
    return np.asarray(numbers, np.float32)
