"""A word-level tokenizer for small closed-vocabulary prompts (the `shapes` captions).

Built with the `tokenizers` library and wrapped as a `transformers.PreTrainedTokenizerFast`, so it
saves, loads and exposes its special ids the usual transformers way. Like CLIP's tokenizer it
lower-cases, wraps every prompt as `<|startoftext|> ... <|endoftext|>` and gives the two markers
the two highest ids, so the text encoder's pooled output (the first `<|endoftext|>`) is also the
position of the largest id. Unlike CLIP it pads with a distinct `<pad>` (id 0) and keeps `<unk>`
(id 1) only to detect words outside the vocabulary, which `encode` rejects.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from jaxdiff.errors import UserError
from jaxdiff.models.class_names import ClassNames

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)
_TOKENIZER_FILE = "tokenizer.json"
_GROUPS_KEY = "word_groups"  # in tokenizer_config.json
_LISTED_WORDS = 60  # an unknown-word error lists the whole vocabulary up to this size
_CLOSE_MATCH = 0.75  # difflib similarity of a "did you mean" suggestion


def build_tokenizer(
    vocabulary: Sequence[str],
    max_length: int,
    word_groups: Mapping[str, Sequence[str]] | None = None,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `vocabulary` for prompts of at most `max_length` tokens.

    `vocabulary` holds lower-case words and single punctuation marks (e.g.
    `jaxdiff.data.shapes.vocabulary()`); `max_length` counts the start and end tokens. Ids are
    `<pad>` 0, `<unk>` 1, the words in the given order, then `<|startoftext|>` and
    `<|endoftext|>`. `word_groups` names kinds of words (e.g. {"shapes": [...], "colours":
    [...]}, from the data set that defines the vocabulary); the unknown-word error lists a small
    vocabulary by them. They are saved with the tokenizer.
    """
    if max_length < 2:
        raise UserError(f"max_length {max_length} must be at least 2 (start and end tokens)")
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    words = list(dict.fromkeys(vocabulary))
    for word in words:
        pieces = [piece for piece, _ in pre_tokenizer.pre_tokenize_str(word)]
        if word in _SPECIAL_TOKENS or word != word.lower() or pieces != [word]:
            raise UserError(
                f"vocabulary entry {word!r} must be one lower-case word or one punctuation mark, "
                f"other than {', '.join(_SPECIAL_TOKENS)}"
            )
    groups = {name: list(members) for name, members in (word_groups or {}).items()}
    strays = [word for members in groups.values() for word in members if word not in words]
    if strays:
        raise UserError(f"word_groups name {strays[0]!r}, which is not in the vocabulary")
    ids = {token: i for i, token in enumerate([PAD_TOKEN, UNK_TOKEN, *words, BOS_TOKEN, EOS_TOKEN])}
    backend = Tokenizer(models.WordLevel(ids, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, ids[BOS_TOKEN]), (EOS_TOKEN, ids[EOS_TOKEN])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
        **{_GROUPS_KEY: list(groups.items())},  # pairs: JSON keeps their order
    )


def encode(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> np.ndarray:
    """Token ids of `prompts`, padded to the tokenizer's max length: `[B, max_length]` int32.

    Each row is `<|startoftext|>`, the prompt's tokens, `<|endoftext|>`, then `<pad>`; the empty
    prompt "" gives the unconditional input used by classifier-free guidance. Raises UserError
    for a word outside the vocabulary or a prompt longer than the limit.
    """
    if isinstance(prompts, str):
        raise UserError(f"prompts must be a sequence of strings, got the single string {prompts!r}")
    max_length = tokenizer.model_max_length
    ids = np.full((len(prompts), max_length), tokenizer.pad_token_id, dtype=np.int32)  # [B, L]
    if not prompts:
        return ids
    encoded = tokenizer(
        list(prompts),
        padding=False,
        truncation=False,
        return_offsets_mapping=True,
        verbose=False,
    )
    for row, (prompt, tokens, offsets) in enumerate(
        zip(prompts, encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ):
        if tokenizer.unk_token_id in tokens:
            start, end = offsets[tokens.index(tokenizer.unk_token_id)]
            raise UserError(_unknown_word_message(tokenizer, prompt[start:end], prompt))
        if len(tokens) > max_length:
            raise UserError(
                f"prompt {prompt!r} has {len(tokens)} tokens (with start and end tokens); the "
                f"limit is {max_length}"
            )
        ids[row, : len(tokens)] = tokens
    return ids


def prompt_ids(vocabulary: PreTrainedTokenizerFast | ClassNames, prompts: Sequence) -> np.ndarray:
    """The model input of `prompts`: token ids `[B, max_length]` (`encode`) for a word
    tokenizer, class labels `[B, 1]` for a class-conditional model's `ClassNames`."""
    if isinstance(vocabulary, ClassNames):
        return vocabulary.encode(prompts)
    return encode(vocabulary, prompts)


def _unknown_word_message(tokenizer: PreTrainedTokenizerFast, word: str, prompt: str) -> str:
    """One line naming the unknown word and the prompt, a close known word if there is one, and
    the known words: all of them, by group, when there are few; else a count."""
    known = sorted(t for t in tokenizer.get_vocab() if t not in _SPECIAL_TOKENS and t.isalnum())
    close = difflib.get_close_matches(word.lower(), known, n=1, cutoff=_CLOSE_MATCH)
    message = f"unknown word {word!r} in prompt {prompt!r}"
    if close:
        message += f" (did you mean {close[0]!r}?)"
    if len(known) > _LISTED_WORDS:
        return f"{message}; the vocabulary has {len(known)} words"
    saved = tokenizer.init_kwargs.get(_GROUPS_KEY, ())
    groups = {name: [w for w in words if w in known] for name, words in saved}
    grouped = {w for words in groups.values() for w in words}
    rest = [w for w in known if w not in grouped]
    if rest:
        groups["other words" if groups else "known words"] = rest
    listing = "; ".join(f"{name}: {', '.join(words)}" for name, words in groups.items())
    return f"{message}; {listing}"


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
    """Writes the tokenizer to `directory` (created if missing) with `save_pretrained`."""
    tokenizer.save_pretrained(os.fspath(directory))


def load_word_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Reads a tokenizer written by `save_tokenizer`."""
    path = os.fspath(directory)
    if not os.path.isfile(os.path.join(path, _TOKENIZER_FILE)):
        raise UserError(
            f"no tokenizer in {path!r}: expected {_TOKENIZER_FILE} as written by save_tokenizer"
        )
    return PreTrainedTokenizerFast.from_pretrained(path)
