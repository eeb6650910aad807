"""The procedural `shapes` dataset: determinism, holdout, coverage, captions and validation."""

import re

import numpy as np
import pytest
from scipy import ndimage

from jaxdiff.data import shapes
from jaxdiff.data.shapes import COLOURS, SHAPES, ShapesDataset
from jaxdiff.errors import UserError
from jaxdiff.evaluation.shape_attributes import read_attributes


@pytest.mark.parametrize("background", ["plain", "textured"])
def test_same_index_gives_same_example_in_any_batch(background: str) -> None:
    data = ShapesDataset(image_size=32, seed=3, background=background)
    big = data.batch(np.arange(100))
    picked = np.array([97, 5, 42, 5])
    small = data.batch(picked)
    np.testing.assert_array_equal(small["image"], big["image"][picked])
    np.testing.assert_array_equal(small["attributes"], big["attributes"][picked])
    assert small["caption"] == [big["caption"][i] for i in picked]
    again = ShapesDataset(image_size=32, seed=3, background=background).images(picked)
    np.testing.assert_array_equal(again, data.images(picked))


def test_batch_layout() -> None:
    data = ShapesDataset(image_size=16)
    batch = data.batch(np.arange(8))
    assert batch["image"].shape == (8, 16, 16, 3)
    assert batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["attributes"].shape == (8, 3) and batch["attributes"].dtype == np.int32
    assert len(batch["caption"]) == 8
    images = data.images(np.arange(8))
    assert images.dtype == np.uint8
    np.testing.assert_allclose(batch["image"], images / 127.5 - 1.0, atol=1e-6)


def test_seeds_differ() -> None:
    indices = np.arange(200)
    a, b = ShapesDataset(seed=0), ShapesDataset(seed=1)
    assert (a.attributes(indices) != b.attributes(indices)).any(axis=1).mean() > 0.9
    assert a.captions(indices) != b.captions(indices)
    assert not np.array_equal(a.images(indices[:4]), b.images(indices[:4]))


def test_attributes_are_uniform_and_cover_every_value() -> None:
    attributes = ShapesDataset(seed=5).attributes(np.arange(9000))
    combo = (attributes[:, 0] * 6 + attributes[:, 1]) * 5 + attributes[:, 2]
    counts = np.bincount(combo, minlength=90)
    assert counts.min() > 50 and counts.max() < 150  # 100 expected each
    for column, names in enumerate((shapes.SHAPES, shapes.COLOURS, shapes.POSITIONS)):
        assert set(attributes[:, column]) == set(range(len(names)))


def test_holdout_never_appears() -> None:
    holdout = shapes.parse_holdout(
        "green triangle top right; blue circle center; red square, upper left"
    )
    data = ShapesDataset(seed=2, holdout=holdout)
    attributes = data.attributes(np.arange(5000))
    seen = {
        (shapes.SHAPES[s], shapes.COLOURS[c], shapes.POSITIONS[p])
        for s, c, p in attributes.tolist()
    }
    assert seen.isdisjoint(holdout)
    assert len(seen) == 90 - len(holdout)
    for caption in data.captions(np.arange(5000)):
        s, c, p = shapes.caption_attributes(caption)
        assert (shapes.SHAPES[s], shapes.COLOURS[c], shapes.POSITIONS[p]) not in holdout


def test_captions_parse_back_to_attributes() -> None:
    data = ShapesDataset(seed=4)
    indices = np.arange(3000)
    captions = data.captions(indices)
    parsed = np.array([shapes.caption_attributes(c) for c in captions])
    np.testing.assert_array_equal(parsed, data.attributes(indices))
    assert len(set(captions)) > 500  # many paraphrases, not one caption per combination


def test_captions_use_the_paraphrases() -> None:
    captions = set(ShapesDataset(seed=0).captions(np.arange(5000)))
    for pattern in [
        r"^a \w+ \w+ in the top left corner$",
        r"^top-left: \w+ \w+$",
        r"^\w+ \w+, upper left$",
        r"^there is a \w+ \w+ in the ",
        r"^center: a \w+ \w+$",
        r" in the middle$",
        r" in the centre$",
        r", coloured \w+$",
    ]:
        assert any(re.search(pattern, c) for c in captions), pattern


def test_vocabulary_covers_every_caption_token() -> None:
    vocabulary = set(shapes.vocabulary())
    assert shapes.vocabulary() == sorted(vocabulary)
    assert {"-", ":", ","} <= vocabulary
    tokens = set()
    for caption in ShapesDataset(seed=1).captions(np.arange(5000)):
        tokens.update(re.findall(r"\w+|[^\w\s]", caption.lower()))
    assert tokens == vocabulary


def test_prompt_and_combinations() -> None:
    assert shapes.prompt("circle", "red", "top left") == "a red circle in the top left corner"
    assert shapes.prompt("square", "blue", "center") == "a blue square in the center"
    combos = shapes.combinations()
    assert len(combos) == 90 == len(set(combos))
    for shape, colour, position in combos:
        ids = shapes.caption_attributes(shapes.prompt(shape, colour, position))
        assert ids == (
            shapes.SHAPES.index(shape),
            shapes.COLOURS.index(colour),
            shapes.POSITIONS.index(position),
        )
    with pytest.raises(UserError, match="'purple'"):
        shapes.prompt("circle", "purple", "center")


def test_parse_holdout() -> None:
    assert shapes.parse_holdout("") == ()
    assert shapes.parse_holdout("green triangle top right; blue circle center;") == (
        ("triangle", "green", "top right"),
        ("circle", "blue", "center"),
    )
    assert shapes.parse_holdout("Lower-Right: a cyan square; cyan square bottom right") == (
        ("square", "cyan", "bottom right"),
    )
    for bad, message in [
        ("gren triangle top right", "unknown word 'gren'"),
        ("green top right", "exactly one shape"),
        ("green red triangle top right", "exactly one colour"),
        ("green triangle top", "exactly one region"),
        ("green triangle top left center", "exactly one region"),
    ]:
        with pytest.raises(UserError, match=message):
            shapes.parse_holdout(bad)


def test_images_show_the_shape_where_the_caption_says() -> None:
    data = ShapesDataset(image_size=32, seed=6, background="plain")
    images = data.images(np.arange(200)).astype(np.int16)
    attributes = data.attributes(np.arange(200))
    saturated = (images.max(-1) - images.min(-1)) > 60  # [N, 32, 32]
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    for mask, position in zip(saturated, attributes[:, 2], strict=True):
        centre = np.array([xs[mask].mean(), ys[mask].mean()]) / 32
        assert np.abs(centre - shapes.ANCHORS[position]).max() < 0.1
        assert 0.03 < mask.mean() < 0.15
        # The shape sits inside its quadrant: no saturated pixel in the opposite half.
        if position != 4:
            x, y = shapes.ANCHORS[position]
            assert not mask[:, 16:].any() if x < 0.5 else not mask[:, :16].any()
            assert not mask[16:, :].any() if y < 0.5 else not mask[:16, :].any()
    # Away from the shape's anti-aliased edge the background is grey: equal channels.
    near = ndimage.binary_dilation(saturated, structure=np.ones((1, 3, 3), bool), iterations=2)
    background = images[~near]  # [P, 3]
    assert (background.max(-1) - background.min(-1)).max() == 0


@pytest.mark.parametrize("size", [16, 32, 64])
def test_textured_background_is_grey_and_low_contrast(size: int) -> None:
    data = ShapesDataset(image_size=size, seed=7, background="textured")
    images = data.images(np.arange(50)).astype(np.int16)
    grey = (images.max(-1) - images.min(-1)) == 0  # [N, S, S]
    assert grey.mean() > 0.8
    levels = images[..., 0].astype(np.float32)
    for image, mask in zip(levels, grey, strict=True):
        values = image[mask]
        assert 20 < values.mean() < 150 and values.std() < 20
        assert values.std() > 2  # there is a texture


def test_validation() -> None:
    for kwargs, message in [
        ({"image_size": 8}, "image_size 8"),
        ({"seed": -1}, "seed -1"),
        ({"seed": 2**64}, "seed 18446744073709551616"),
        ({"background": "noisy"}, "'noisy'"),
        ({"holdout": (("green", "triangle", "top right"),)}, "shape 'green'"),
        ({"holdout": (("triangle", "green", "top"),)}, "position 'top'"),
        ({"holdout": tuple(shapes.combinations())}, "all 90"),
    ]:
        with pytest.raises(UserError, match=message):
            ShapesDataset(**kwargs)
    data = ShapesDataset(holdout=tuple(shapes.combinations()[1:]))
    assert (data.attributes(np.arange(20)) == 0).all()
    with pytest.raises(UserError, match="index -3"):
        data.images(np.array([0, -3]))
    with pytest.raises(UserError, match="1-D integer"):
        data.images(np.array([0.5]))


@pytest.mark.parametrize("conditioning", ["mask", "edges"])
def test_conditioning_images_trace_the_shape(conditioning: str) -> None:
    """The mask covers the image's coloured pixels, the outline lies on the mask's border; a
    record and a batch give the same."""
    plain = ShapesDataset(image_size=32, seed=3, background="plain")
    data = ShapesDataset(image_size=32, seed=3, background="plain", conditioning=conditioning)
    indices = np.arange(40)
    batch = data.batch(indices)
    control = batch["conditioning_image"]  # [N, 32, 32, 3] in [0, 1]
    assert control.shape == (40, 32, 32, 3) and control.dtype == np.float32
    assert (control[..., :1] == control).all() and control.min() >= 0 and control.max() == 1
    np.testing.assert_array_equal(data[7]["conditioning_image"], np.rint(255 * control[7]))
    np.testing.assert_array_equal(batch["image"], plain.batch(indices)["image"])
    images = plain.images(indices).astype(np.int16)
    shape = (images.max(-1) - images.min(-1)) > 60  # [N, 32, 32] the saturated shape
    on = control[..., 0] > 0.5
    if conditioning == "mask":
        assert (control[..., 0][shape] > 0).all() and (shape[on]).mean() > 0.85
    else:
        inside = ndimage.binary_erosion(shape, structure=np.ones((1, 3, 3), bool), iterations=2)
        assert on.any(axis=(1, 2)).all() and not (on & inside).any()
        near = ndimage.binary_dilation(shape, structure=np.ones((1, 3, 3), bool), iterations=2)
        assert not (on & ~near).any()
    with pytest.raises(UserError, match=r"conditioning='depth' .*accepted: '' \(none\), mask"):
        ShapesDataset(conditioning="depth")


def test_conditioning_images_for_other_attributes() -> None:
    """A mask of another shape in the same place (the example's own jitter and size), read back
    as that shape; the examples' own attributes give their records' masks."""
    data = ShapesDataset(image_size=32, seed=3, background="plain", conditioning="mask")
    indices = np.arange(30)
    own = data.attributes(indices)
    np.testing.assert_array_equal(
        data.conditioning_images(indices), np.rint(255 * data.batch(indices)["conditioning_image"])
    )
    other = own.copy()
    other[:, 0] = (own[:, 0] + 1) % len(SHAPES)
    masks = data.conditioning_images(indices, other)  # [N, 32, 32, 3] white on black
    coloured = np.where(masks > 127, np.array([225, 45, 45], np.uint8), np.uint8(90))
    read = read_attributes(coloured)
    np.testing.assert_array_equal(read[:, [0, 2]], other[:, [0, 2]])
    with pytest.raises(UserError, match=r"attributes of shape \(30, 2\); accepted: \[30, 3\]"):
        data.conditioning_images(indices, other[:, :2])
    other[0, 1] = len(COLOURS)
    with pytest.raises(UserError, match=r"attributes of shape \(30, 3\); accepted: \[30, 3\] \("):
        data.conditioning_images(indices, other)
    with pytest.raises(UserError, match=r"data\.conditioning is ''; accepted: mask, edges"):
        ShapesDataset().conditioning_images(indices)
