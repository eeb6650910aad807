"""The word-level prompt tokenizer: layout, errors and save / load."""

import re

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from jaxdiff.data import shapes
from jaxdiff.errors import UserError
from jaxdiff.models.tokenizer import build_tokenizer, encode, save_tokenizer
from jaxdiff.models.tokenizer import load_word_tokenizer as load_tokenizer

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(shapes.vocabulary(), MAX_LENGTH)


def test_special_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    size = len(shapes.vocabulary()) + 4
    assert len(tokenizer) == size
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 1
    assert tokenizer.bos_token_id == size - 2 and tokenizer.eos_token_id == size - 1
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.model_max_length == MAX_LENGTH


def test_encode_layout(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = encode(tokenizer, ["A red circle in the top-left corner", "", "top-left: red circle"])
    assert ids.shape == (3, MAX_LENGTH) and ids.dtype == np.int32
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    words = ["a", "red", "circle", "in", "the", "top", "-", "left", "corner"]
    vocab = tokenizer.get_vocab()
    np.testing.assert_array_equal(ids[0, :11], [bos, *(vocab[w] for w in words), eos])
    assert (ids[0, 11:] == pad).all()
    np.testing.assert_array_equal(ids[1], [bos, eos] + [pad] * (MAX_LENGTH - 2))
    # The first end token is also the largest id, so argmax pooling finds it.
    np.testing.assert_array_equal(ids.argmax(axis=1), (ids == eos).argmax(axis=1))
    assert encode(tokenizer, []).shape == (0, MAX_LENGTH)


def test_every_caption_encodes(tokenizer: PreTrainedTokenizerFast) -> None:
    captions = shapes.ShapesDataset(seed=9).captions(np.arange(2000))
    ids = encode(tokenizer, captions)
    assert not (ids == tokenizer.unk_token_id).any()
    assert ((ids == tokenizer.eos_token_id).sum(axis=1) == 1).all()
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    for caption in captions[:300]:
        assert [p for p, _ in pieces(caption.lower())] == re.findall(r"\w+|[^\w\s]", caption)


WORD_GROUPS = {"shapes": shapes.SHAPES, "colours": shapes.COLOURS}


def unknown_word_message(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    with pytest.raises(UserError) as error:
        encode(tokenizer, ["", prompt])
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_word_suggests_only_a_close_match(tokenizer: PreTrainedTokenizerFast) -> None:
    message = unknown_word_message(tokenizer, "a red Circel in the middle")
    assert "unknown word 'Circel' in prompt 'a red Circel in the middle'" in message
    assert "(did you mean 'circle'?)" in message
    assert "did you mean" not in unknown_word_message(tokenizer, "a pink circle")


def test_unknown_word_lists_a_small_vocabulary_by_group(tmp_path) -> None:
    grouped = build_tokenizer(shapes.vocabulary(), MAX_LENGTH, WORD_GROUPS)
    save_tokenizer(grouped, tmp_path)
    message = unknown_word_message(load_tokenizer(tmp_path), "a pink circle")
    words = [w for w in shapes.vocabulary() if w.isalnum()]
    other = ", ".join(w for w in words if w not in shapes.SHAPES + shapes.COLOURS)
    assert message.endswith(
        "; shapes: circle, square, triangle; colours: red, green, blue, yellow, magenta, cyan; "
        f"other words: {other}"
    )
    flat = unknown_word_message(build_tokenizer(shapes.vocabulary(), MAX_LENGTH), "pink")
    assert flat.endswith(f"; known words: {', '.join(words)}")


def test_unknown_word_counts_a_large_vocabulary() -> None:
    words = [f"word{i}" for i in range(100)]
    message = unknown_word_message(build_tokenizer(words, MAX_LENGTH), "wrod1")
    assert message.endswith("(did you mean 'word1'?); the vocabulary has 100 words"), message


def test_too_long(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt = "a red circle " * 5  # 15 words + start and end
    with pytest.raises(UserError, match=f"17 tokens .* limit is {MAX_LENGTH}"):
        encode(tokenizer, [prompt])
    fits = " ".join(["red"] * (MAX_LENGTH - 2))
    assert encode(tokenizer, [fits])[0, -1] == tokenizer.eos_token_id


def test_save_load_round_trip(tokenizer: PreTrainedTokenizerFast, tmp_path) -> None:
    save_tokenizer(tokenizer, tmp_path / "tokenizer")
    loaded = load_tokenizer(tmp_path / "tokenizer")
    prompts = [*shapes.ShapesDataset(seed=2).captions(np.arange(50)), ""]
    np.testing.assert_array_equal(encode(loaded, prompts), encode(tokenizer, prompts))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.model_max_length == MAX_LENGTH
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    with pytest.raises(UserError, match="no tokenizer"):
        load_tokenizer(tmp_path / "elsewhere")


def test_build_validation() -> None:
    with pytest.raises(UserError, match="'top-left'"):
        build_tokenizer(["top-left"], 8)
    with pytest.raises(UserError, match="'Red'"):
        build_tokenizer(["Red"], 8)
    with pytest.raises(UserError, match="max_length 1"):
        build_tokenizer(["red"], 1)
    with pytest.raises(UserError, match="word_groups name 'blue', which is not in the vocab"):
        build_tokenizer(["red"], 8, {"colours": ["red", "blue"]})
    with pytest.raises(UserError, match="single string"):
        encode(build_tokenizer(["red"], 8), "red")
