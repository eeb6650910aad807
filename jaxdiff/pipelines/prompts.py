"""Prompts to token ids as Stable Diffusion's pipelines tokenize them.

Every prompt is padded to the tokenizer's `model_max_length` (77 for CLIP) and cut there, as
diffusers does; a prompt that is cut gives a warning naming the words dropped. `tokenize` is the
one padded, truncated tokenizer call of jaxdiff: CLIP scores and fine-tuning captions use it
too, without the warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.errors import require


def prompt_list(prompt: str | Sequence[str], what: str = "prompt") -> list[str]:
    """A prompt or a non-empty sequence of prompts as a list of strings."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    require(len(prompts) > 0, f"no {what} given; pass a string or a non-empty list of strings")
    for p in prompts:
        require(isinstance(p, str), f"{what} {p!r} is not a string")
    return prompts


def per_prompt_texts(
    texts: str | Sequence[str] | None, count: int, what: str = "negative_prompt"
) -> list[str]:
    """One text per prompt of a call's per-prompt argument `what` (negative prompts, SDXL's
    `prompt_2`): None is the empty prompt, a string applies to all."""
    if texts is None:
        return [""] * count
    if isinstance(texts, str):
        return [texts] * count
    given = prompt_list(texts, what)
    require(
        len(given) == count,
        f"{what} has {len(given)} entries for {count} prompts; give one per prompt, one "
        "string for all, or None",
    )
    return given


def tokenize(
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int | None = None,
    warn: bool = True,
) -> np.ndarray:
    """Token ids `[N, max_length]` int32, padded and cut at `max_length` (the tokenizer's
    `model_max_length` when None); with `warn`, warns once per prompt that is cut, naming the
    words dropped."""
    limit = tokenizer.model_max_length if max_length is None else max_length
    ids = tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=True)[
        "input_ids"
    ]
    if warn:
        _warn_cut(tokenizer, prompts, limit)
    return np.asarray(ids, np.int32)


def _warn_cut(tokenizer: Any, prompts: Sequence[str], limit: int) -> None:
    """One warning per prompt longer than `limit` tokens, naming the words dropped."""
    full = tokenizer(list(prompts), padding=False, truncation=False, verbose=False)["input_ids"]
    for prompt, tokens in zip(prompts, full, strict=True):
        if len(tokens) > limit:
            # The cut keeps the first limit - 1 tokens and the end token.
            dropped = tokenizer.decode(tokens[limit - 1 : -1])
            warnings.warn(
                f"prompt {prompt[:40]!r}... is longer than the tokenizer's {limit} tokens; "
                f"these words were dropped: {dropped!r}",
                stacklevel=4,
            )
