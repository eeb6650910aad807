"""Caption text as the word-level tokenizer sees it (`jaxdiff.models.tokenizer`)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks, as the word-level tokenizer splits them."""
    return _WORD_RE.findall(text.lower())


def vocabulary_of(captions: Iterable[str]) -> list[str]:
    """Every word and punctuation mark of ``captions``, sorted."""
    return sorted({word for caption in captions for word in words(caption)})
