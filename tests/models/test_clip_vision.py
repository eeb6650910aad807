"""The CLIP image encoder and CLIP score: parity with transformers' CLIPVisionModelWithProjection
and CLIPModel on tiny random weights (far from their initial values, with outputs far from flat;
one array of the weights nudged by 1% misses by more than 10x the tolerance), preprocessing
against CLIPImageProcessor, configs, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import (
    CLIP_VISION,
    assert_far_from_flat,
    nudged,
    perturb,
    save_clip_model,
)

from jaxdiff.convert import from_diffusers, to_diffusers
from jaxdiff.convert.transformers_clip import CLIP_VISION_CONFIG
from jaxdiff.errors import UserError
from jaxdiff.evaluation.clip_score import (
    clip_score,
    clip_scorer,
    cosine_similarity,
    load_clip,
)
from jaxdiff.evaluation.clip_score import load_clip_tokenizer as load_tokenizer
from jaxdiff.models import CLIP_VISION_PRESETS, CLIPVisionTransformer
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.clip_vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess

CAPTIONS = ["a red circle", "there", "a blue square on the left", "re re re"]
VISION_TOLERANCE = 1e-5  # max abs error of the image encoder's outputs


def _max_diff(out, expected) -> float:
    out, expected = np.asarray(out), np.asarray(expected)
    assert out.shape == expected.shape
    return float(np.abs(out - expected).max())


def _nchw(x):
    return torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))


def _images(batch=4, size=32, seed=0):
    return np.random.RandomState(seed).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)


def _normalize(images):
    return (images - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(
        OPENAI_CLIP_STD, np.float32
    )


@pytest.fixture(scope="module")
def saved_vision(tmp_path_factory):
    """(transformers CLIPVisionModelWithProjection, the folder it saved itself to)."""
    import transformers

    torch.manual_seed(3)
    model = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**CLIP_VISION)
    ).eval()
    perturb(model, seed=3)
    folder = tmp_path_factory.mktemp("clip_vision")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def saved_clip_model(tmp_path_factory):
    """(transformers CLIPModel with an OpenCLIP-style gelu image tower, its folder, which also
    holds the tiny tokenizer)."""
    model, folder = save_clip_model(tmp_path_factory.mktemp("clip_model"))
    return model, folder, folder


@pytest.fixture(scope="module")
def clip(saved_clip_model):
    return load_clip(saved_clip_model[1])


def test_vision_matches_transformers(saved_vision):
    ref, folder = saved_vision
    encoder = from_diffusers(folder)
    assert isinstance(encoder, CLIPVisionTransformer)
    pixels = np.random.RandomState(1).randn(3, 32, 32, 3).astype(np.float32)
    graphdef, state = nnx.split(encoder)
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    out = run(state, pixels)
    with torch.no_grad():
        expected = ref(_nchw(pixels))
    embeds, hidden = expected.image_embeds.numpy(), expected.last_hidden_state.numpy()
    assert_far_from_flat(embeds)
    assert_far_from_flat(hidden)
    assert out.last_hidden_state.shape == (3, 17, 32)
    assert _max_diff(out.image_embeds, embeds) < VISION_TOLERANCE
    assert _max_diff(out.last_hidden_state, hidden) < VISION_TOLERANCE
    wrong = run(nudged(state), pixels)  # the same compiled call
    assert _max_diff(wrong.image_embeds, embeds) > 10 * VISION_TOLERANCE


def test_vision_writes_back_what_transformers_loads(saved_vision, tmp_path):
    import transformers

    ref, folder = saved_vision
    to_diffusers(from_diffusers(folder), tmp_path / "out")
    reloaded = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "out")
    assert reloaded.config.to_dict() | {"_name_or_path": ""} == ref.config.to_dict() | {
        "_name_or_path": ""
    }
    expected = ref.state_dict()
    for key, value in reloaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[key].numpy(), err_msg=key)


def test_clip_score_matches_transformers_clip_model(saved_clip_model, clip):
    ref, _, tokenizer_dir = saved_clip_model
    tokenizer = load_tokenizer(tokenizer_dir)
    images = _images()
    scores = clip_score(clip.text_encoder, clip.vision_encoder, tokenizer, images, CAPTIONS)
    tokens = tokenizer(CAPTIONS, padding="max_length", max_length=16, truncation=True)
    ids = torch.tensor(tokens["input_ids"])
    with torch.no_grad():
        out = ref(
            input_ids=ids,
            attention_mask=torch.tensor(tokens["attention_mask"]),
            pixel_values=_nchw(_normalize(images)),
        )
        text_embeds = ref.get_text_features(input_ids=ids).pooler_output.numpy()
        image_embeds = ref.get_image_features(_nchw(_normalize(images))).pooler_output.numpy()
    cosine = np.diag(out.logits_per_image.numpy()) / ref.logit_scale.exp().item()
    expected = 100 * np.maximum(cosine, 0)
    assert (expected > 0).sum() >= 2 and (expected == 0).sum() >= 1  # both sides of the clip
    assert _max_diff(scores, expected) < 1e-3  # scores in [0, 100]: 1e-5 relative
    assert clip.logit_scale == pytest.approx(ref.logit_scale.item())
    ours_text = clip.text_encoder(jnp.asarray(tokens["input_ids"])).text_embeds
    ours_image = clip.vision_encoder(_normalize(images)).image_embeds
    assert _max_diff(ours_text, text_embeds) < 1e-5
    assert _max_diff(ours_image, image_embeds) < 1e-5
    np.testing.assert_allclose(cosine_similarity(ours_image, ours_text), cosine, atol=1e-5)


def test_scorer_over_devices_equals_clip_score(saved_clip_model, clip):
    """Both towers in padded batches of 8 split over the 8 devices, uint8 images."""
    tokenizer = load_tokenizer(saved_clip_model[2])
    images = np.rint(np.concatenate([_images(), _images(seed=1)]) * 255).astype(np.uint8)
    captions = CAPTIONS + CAPTIONS[::-1]
    expected = clip_score(
        clip.text_encoder, clip.vision_encoder, tokenizer, images / 255.0, captions
    )
    scores = clip_scorer(clip, tokenizer, batch_size=5)(images[:7], captions[:7])
    np.testing.assert_allclose(scores, np.asarray(expected)[:7], rtol=1e-5, atol=1e-4)


def test_token_ids_and_hessel_weight(saved_clip_model, clip):
    tokenizer = load_tokenizer(saved_clip_model[2])
    images = _images()
    ids = tokenizer(
        CAPTIONS, padding="max_length", max_length=16, truncation=True, return_tensors="np"
    )
    from_ids = clip_score(clip.text_encoder, clip.vision_encoder, None, images, ids["input_ids"])
    hessel = clip_score(
        clip.text_encoder, clip.vision_encoder, tokenizer, images, CAPTIONS, weight=2.5
    )
    np.testing.assert_allclose(np.asarray(hessel) * 40, from_ids, rtol=1e-5, atol=1e-5)


def test_preprocess_matches_clip_image_processor():
    import transformers

    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    rng = np.random.RandomState(0)
    smooth = jax.image.resize(jnp.asarray(rng.rand(2, 6, 7, 3)), (2, 45, 61, 3), "linear")
    landscape = np.round(np.clip(np.asarray(smooth), 0, 1) * 255).astype(np.uint8)
    portrait = np.ascontiguousarray(landscape.transpose(0, 2, 1, 3)[:, :, ::-1])  # 61 x 45
    for batch in (landscape, portrait, landscape[:, :32, :32]):  # shrink, shrink, identity
        expected = processor(images=list(batch), return_tensors="np")["pixel_values"]
        ours = preprocess(jnp.asarray(batch, jnp.float32) / 255, 32)
        assert ours.shape == (2, 32, 32, 3)
        diff = np.abs(np.asarray(ours) - expected.transpose(0, 2, 3, 1))
        # PIL rounds to 8 bits: about one level (1 / 255 / std = 0.015) at most.
        assert diff.max() < 0.02 and diff.mean() < 0.006, (diff.max(), diff.mean())


def test_config_defaults_are_transformers_defaults():
    from transformers import CLIPVisionConfig

    reference = CLIPVisionConfig().to_dict()
    assert {k: reference[k] for k in CLIP_VISION_CONFIG.defaults} == dict(
        CLIP_VISION_CONFIG.defaults
    )


def test_every_token_sees_every_patch(random_model):
    """No causal mask: changing the last patch changes every output token, the class token
    included."""
    encoder = random_model(lambda: CLIPVisionTransformer(**CLIP_VISION, rngs=nnx.Rngs(0)))
    pixels = _images(batch=1)
    changed = pixels.copy()
    changed[:, 24:, 24:] += 1  # the last patch (row-major)
    a, b = encoder(pixels).last_hidden_state, encoder(changed).last_hidden_state  # [1, 17, D]
    assert np.abs(np.asarray(a - b)).max(axis=-1).min() > 1e-3


def test_real_initialization_and_logical_axes(check_logical_axes):
    encoder = CLIPVisionTransformer(**CLIP_VISION, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    check_logical_axes(encoder)
    assert np.isfinite(np.asarray(encoder(_normalize(_images(batch=1))).image_embeds)).all()


def test_clip_vit_b32_has_the_reference_parameter_count(count_params):
    encoder = eval_shape(
        lambda: CLIPVisionTransformer(**CLIP_VISION_PRESETS["clip_vit_b32"], rngs=nnx.Rngs(0))
    )
    assert count_params(encoder) == 87_849_216  # transformers, CLIPVisionModelWithProjection


def _one_line_error(call, match):
    with pytest.raises(UserError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("images", "captions", "match"),
    [
        (
            np.zeros((2, 32, 32), np.float32),
            CAPTIONS[:2],
            r"\(2, 32, 32\); accepted: \[B, H, W, 3\]",
        ),
        (np.zeros((2, 32, 32, 4), np.float32), CAPTIONS[:2], r"accepted: \[B, H, W, 3\]"),
        (np.zeros((2, 32, 32, 3), np.uint8), CAPTIONS[:2], "dtype uint8"),
        (np.full((2, 32, 32, 3), 255.0, np.float32), CAPTIONS[:2], r"\[255, 255\]"),
        (_images(), CAPTIONS[:3], "3 captions for 4 images"),
        (_images(batch=2), np.zeros((3, 16), np.int32), "3 captions for 2 images"),
        (_images(batch=1), "a red circle", "single string"),
    ],
)
def test_bad_clip_score_inputs_raise_user_error(saved_clip_model, clip, images, captions, match):
    tokenizer = load_tokenizer(saved_clip_model[2])
    _one_line_error(
        lambda: clip_score(clip.text_encoder, clip.vision_encoder, tokenizer, images, captions),
        match,
    )


def test_bad_pixel_values_and_folders_raise_user_error(clip, saved_vision, tmp_path):
    _one_line_error(
        lambda: clip.vision_encoder(np.zeros((1, 24, 24, 3), np.float32)),
        r"\(1, 24, 24, 3\); accepted: \[B, 32, 32, 3\]",
    )
    _one_line_error(
        lambda: load_clip(saved_vision[1]), "'CLIPVisionModelWithProjection'.*accepted: a"
    )
    _one_line_error(lambda: load_tokenizer(tmp_path), "no usable tokenizer")
    _one_line_error(
        lambda: eval_shape(
            lambda: CLIPVisionTransformer(**{**CLIP_VISION, "patch_size": 5}, rngs=nnx.Rngs(0))
        ),
        "patch_size=5 does not divide image_size=32",
    )
