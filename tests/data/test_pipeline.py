"""The grain record pipeline: shapes unchanged through it, transforms, shuffling, threads."""

import numpy as np
import pytest

from configs import common
from jaxdiff.data.pipeline import ImageTextDataset, ImageTransform, make_dataset
from jaxdiff.data.shapes import ShapesDataset
from jaxdiff.errors import UserError


class ListSource:
    """Records held in memory: the smallest `Source`."""

    name = "test records"

    def __init__(self, images, captions):
        self.images, self.captions = images, captions

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "caption": self.captions[index], "index": index}

    def image_shape(self):
        shapes = {image.shape[:2] for image in self.images}
        return shapes.pop() if len(shapes) == 1 else None

    def vocabulary(self):
        return sorted({w for c in self.captions for w in c.split()})


def numbered(count: int, size: int = 8) -> ListSource:
    images = [np.full((size, size, 3), i, np.uint8) for i in range(count)]
    return ListSource(images, [f"image {i}" for i in range(count)])


def test_shapes_through_the_pipeline_equal_the_renderer():
    data = make_dataset(common.shapes_data(image_size=16))
    positions = np.array([0, 1, 2, 63, 10**6, 2**40 + 3])
    expected = ShapesDataset(image_size=16, holdout=data.source.holdout).batch(positions)
    batch = data.batch(positions)
    np.testing.assert_array_equal(batch["image"], expected["image"])
    np.testing.assert_array_equal(batch["attributes"], expected["attributes"])
    assert batch["caption"] == expected["caption"]


def test_each_epoch_is_a_new_permutation_and_the_seed_fixes_it():
    data = ImageTextDataset(numbered(10), ImageTransform(8), seed=3)
    first, second = data.batch(np.arange(10)), data.batch(np.arange(10, 20))
    seen = [int(i) for i in first["index"]]
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    assert sorted(second["index"].tolist()) == list(range(10))
    assert second["index"].tolist() != seen
    again = ImageTextDataset(numbered(10), ImageTransform(8), seed=3).batch(np.arange(10))
    assert again["index"].tolist() == seen
    unshuffled = ImageTextDataset(numbered(10), ImageTransform(8), shuffle=False)
    assert unshuffled.batch(np.arange(12))["index"].tolist() == [*range(10), 0, 1]


def test_threads_read_the_same_batch():
    source = numbered(40)
    transform = ImageTransform(6, resize=True, crop="random", flip=True)
    serial = ImageTextDataset(source, transform, seed=1).batch(np.arange(100, 140))
    threaded = ImageTextDataset(source, transform, seed=1, threads=3).batch(np.arange(100, 140))
    np.testing.assert_array_equal(serial["image"], threaded["image"])
    assert serial["caption"] == threaded["caption"]


def test_resize_the_shorter_side_then_crop():
    # A 20 x 40 image whose columns count 0..39: resized to 10 x 20, its middle 10 columns remain.
    image = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (20, 40, 3))
    center = ImageTransform(10, resize=True)({"image": image, "caption": "c"}, None)["image"]
    assert center.shape == (10, 10, 3)
    columns = center[0, :, 0].astype(int)
    assert np.all(np.diff(columns) > 0) and 60 <= columns[0] <= 66 and 170 <= columns[-1] <= 176
    data = ImageTextDataset(ListSource([image], ["c"]), ImageTransform(10, True, "random"))
    lefts = {int(b[0, 0, 0]) for b in data.batch(np.arange(64))["image"] * 127.5 + 127.5}
    assert len(lefts) > 4, "random crops start at different columns"


def test_flip_mirrors_about_half_the_images():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 0] = 255  # a bright left column
    data = ImageTextDataset(ListSource([image], ["c"]), ImageTransform(4, flip=True))
    images = data.batch(np.arange(200))["image"]  # [200, 4, 4, 3]
    flipped = np.mean(images[:, 0, -1, 0] > 0)
    assert 0.35 < flipped < 0.65
    assert np.all((images[:, 0, 0, 0] > 0) != (images[:, 0, -1, 0] > 0))


def test_grey_images_become_rgb_and_one_caption_of_several_is_drawn():
    source = ListSource([np.full((4, 4, 1), 7, np.uint8)], [["one", "two", "three"]])
    batch = ImageTextDataset(source, ImageTransform(4)).batch(np.arange(60))
    assert batch["image"].shape == (60, 4, 4, 3)
    assert set(batch["caption"]) == {"one", "two", "three"}


def test_bad_input():
    square = numbered(3)
    with pytest.raises(UserError, match=r"position -1 is negative"):
        ImageTextDataset(square, ImageTransform(8)).batch(np.array([0, -1]))
    with pytest.raises(UserError, match=r"data.crop='middle' is not supported; accepted: center"):
        ImageTransform(8, crop="middle")
    with pytest.raises(UserError, match=r"test records holds no examples"):
        ImageTextDataset(ListSource([], []), ImageTransform(8))
    with pytest.raises(UserError, match=r"image of size 8x8 is not data.image_size 4x4"):
        ImageTextDataset(square, ImageTransform(4)).batch(np.arange(1))


def test_config_errors_name_the_value():
    config = common.shapes_data(image_size=16)
    config.name = "imagenet"
    with pytest.raises(UserError, match=r"data.name='imagenet' is not supported; accepted"):
        make_dataset(config)
