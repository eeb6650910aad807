"""SDXL's text context, pooled text and micro-conditioning against diffusers' own SDXL pipelines
(`encode_prompt`, `_get_add_time_ids`) on tiny random text encoders that transformers saves."""

import numpy as np
import pytest
import torch
from reference_models import build_unet, sdxl_text_encoders, sdxl_unet, write_tokenizer
from transformers import AutoTokenizer

from jaxdiff.convert import from_diffusers
from jaxdiff.errors import UserError
from jaxdiff.pipelines import sdxl_conditioning
from jaxdiff.pipelines.prompts import tokenize

PROMPTS = ["a red car", "the sea"]
NEGATIVES = ["rain", "fog"]
PROJECTION = 20  # the second encoder's projected pooled output
TOLERANCE = 1e-4  # of the reference's scale


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(diffusers' SDXL pipeline, its refiner img2img pipeline, jaxdiff's two encoders and the
    tokenizers), from the same tiny random weights."""
    import diffusers

    folder = tmp_path_factory.mktemp("sdxl_text")
    first, second = sdxl_text_encoders()
    for name, model in (("text_encoder", first), ("text_encoder_2", second)):
        model.save_pretrained(folder / name)
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer(folder / name)
    tokenizers = [AutoTokenizer.from_pretrained(folder / n) for n in ("tokenizer", "tokenizer_2")]
    common = dict(vae=None, scheduler=diffusers.EulerDiscreteScheduler())
    base = diffusers.StableDiffusionXLPipeline(
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=build_unet(sdxl_unet()),
        **common,
    )
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline(
        text_encoder=None,
        text_encoder_2=second,
        tokenizer=None,
        tokenizer_2=tokenizers[1],
        unet=build_unet(sdxl_unet(refiner=True)),
        requires_aesthetics_score=True,
        **common,
    )
    encoders = [from_diffusers(folder / n) for n in ("text_encoder", "text_encoder_2")]
    return base, refiner, encoders, tokenizers


def _close(got, want) -> float:
    """The max error over the reference's scale (asserted within TOLERANCE by the callers)."""
    want = want.numpy() if isinstance(want, torch.Tensor) else want
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_text_context_and_pooled_text_are_diffusers(models, clip_skip):
    base, _, (first, second), tokenizers = models
    with torch.no_grad():
        want = base.encode_prompt(
            PROMPTS, device="cpu", negative_prompt=NEGATIVES, clip_skip=clip_skip
        )
    context, negative_context, pooled, negative_pooled = want
    assert context.shape == (2, 16, 64) and pooled.shape == (2, PROJECTION)

    def ours(prompts, skip):
        ids = [tokenize(t, prompts) for t in tokenizers]
        return sdxl_conditioning.encode_prompts(first, second, *ids, clip_skip=skip)

    skip = clip_skip or 0
    # diffusers skips layers for the prompts only: the negative prompts' context is always the
    # penultimate layer's.
    for prompts, prompt_skip, hidden, pool in (
        (PROMPTS, skip, context, pooled),
        (NEGATIVES, 0, negative_context, negative_pooled),
    ):
        got_hidden, got_pool = ours(prompts, prompt_skip)
        assert _close(got_hidden, hidden) < TOLERANCE and _close(got_pool, pool) < TOLERANCE
    assert _close(ours(PROMPTS, 1 - skip)[0], context) > 10 * TOLERANCE  # one layer off misses


def test_the_refiner_has_the_second_encoder_only(models):
    _, refiner, (_, second), tokenizers = models
    with torch.no_grad():
        context, _, pooled, _ = refiner.encode_prompt(PROMPTS, device="cpu")
    ids = tokenize(tokenizers[1], PROMPTS)
    got_context, got_pooled = sdxl_conditioning.encode_prompts(None, second, None, ids)
    assert context.shape == (2, 16, 32)
    assert _close(got_context, context) < TOLERANCE and _close(got_pooled, pooled) < TOLERANCE


def test_micro_conditioning_is_diffusers(models):
    base, refiner, _, _ = models
    sizes = dict(original_size=(768, 512), crops_coords_top_left=(16, 32))
    want = base._get_add_time_ids(
        **sizes,
        target_size=(1024, 1024),
        dtype=torch.float32,
        text_encoder_projection_dim=PROJECTION,
    )
    got = sdxl_conditioning.time_ids(**sizes, target_size=(1024, 1024))
    np.testing.assert_array_equal(got, want[0].numpy())
    want, negative = refiner._get_add_time_ids(
        **sizes,
        target_size=(1024, 1024),
        aesthetic_score=6.5,
        negative_aesthetic_score=2.0,
        negative_original_size=(512, 512),
        negative_crops_coords_top_left=(0, 0),
        negative_target_size=(1024, 1024),
        dtype=torch.float32,
        text_encoder_projection_dim=PROJECTION,
    )
    np.testing.assert_array_equal(sdxl_conditioning.time_ids(**sizes, aesthetic_score=6.5), want[0])
    got = sdxl_conditioning.time_ids((512, 512), (0, 0), aesthetic_score=2.0)
    np.testing.assert_array_equal(got, negative[0].numpy())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(original_size=(1024,), crops_coords_top_left=(0, 0), target_size=(1, 1)), "two"),
        (dict(original_size=(8, 8), crops_coords_top_left=(0, 0)), "target_size .* or aesthetic"),
        (
            dict(original_size="ab", crops_coords_top_left=(0, 0), target_size=(1, 1)),
            r"original_size='ab'; accepted: two numbers",
        ),
        (
            dict(original_size=(8, 8), crops_coords_top_left=(0, None), target_size=(1, 1)),
            r"crops_coords_top_left=\(0, None\); accepted: two numbers",
        ),
        (
            dict(original_size=(8, 8), crops_coords_top_left=(0, 0), aesthetic_score="high"),
            r"aesthetic_score='high'; accepted: a number",
        ),
        (
            dict(original_size=(8, 8), crops_coords_top_left=(0, 0), aesthetic_score=float("nan")),
            r"aesthetic_score=nan; accepted: a finite number",
        ),
    ],
)
def test_bad_micro_conditioning_is_refused(arguments, message):
    with pytest.raises(UserError, match=message):
        sdxl_conditioning.time_ids(**arguments)
