"""tfds data sets through `tfds.data_source` (mocked: no download), captions from class names."""

from collections import Counter

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.data.tfds_source import TfdsSource
from jaxdiff.errors import UserError


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=12):
        yield


def test_class_name_captions_and_records(mock_tfds):
    source = TfdsSource("cifar10", label_key="label", caption_template="a photo of a {}")
    assert len(source) == 12 and source.image_shape() == (32, 32)
    record = source[3]
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    label = int(source.records[3]["label"])
    assert record["caption"] == f"a photo of a {source.class_names[label].split()[-1]}"
    assert {"a", "photo", "of"} <= set(source.vocabulary())


def test_grey_data_set_through_the_pipeline(mock_tfds):
    data = make_dataset(common.tfds_data("mnist", image_size=16, label_key="label", resize=True))
    batch = data.batch(np.arange(30))  # past the end of the first epoch
    assert batch["image"].shape == (30, 16, 16, 3)
    assert np.all(np.abs(batch["image"]) <= 1.0)
    every_record = [data.source[i]["caption"] for i in range(12)]
    assert Counter(batch["caption"][:12]) == Counter(every_record), "one epoch: each record once"


def test_unconditional_and_caption_features(mock_tfds):
    source = TfdsSource("mnist")
    assert source[0]["caption"] == ""
    with pytest.raises(UserError, match=r"give data.caption_key or data.label_key, not both"):
        TfdsSource("mnist", caption_key="label", label_key="label")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tfds_name": "no_such_data"}, r"tfds data set 'no_such_data' does not exist"),
        ({"tfds_name": "mnist", "label_key": "digit"}, r"has no label feature 'digit'; features"),
        ({"tfds_name": "mnist", "image_key": "photo"}, r"has no image feature 'photo'"),
        ({"tfds_name": "mnist", "label_key": "image"}, r"feature 'image' is not a class label"),
        (
            {"tfds_name": "mnist", "label_key": "label", "caption_template": "digit"},
            r"data.caption_template 'digit' must contain \{\}",
        ),
    ],
)
def test_bad_names(mock_tfds, kwargs, message):
    with pytest.raises(UserError, match=message):
        TfdsSource(**kwargs)


def test_unprepared_data_set_says_how_to_prepare_it(tmp_path):
    with pytest.raises(UserError) as error:
        TfdsSource("mnist", data_dir=str(tmp_path))
    assert str(error.value).endswith(
        "is not prepared; prepare it in ArrayRecord format with `pip install 'jaxdiff[data]'; "
        f"jaxdiff prepare-data mnist --data-dir {tmp_path}`"
    )


def test_wrong_image_size_without_resize(mock_tfds):
    with pytest.raises(UserError, match=r"holds 28x28 images, not data.image_size 16x16"):
        make_dataset(common.tfds_data("mnist", image_size=16))


def test_conditioning_feature(mock_tfds):
    """A conditioning image feature (here the image feature itself) beside each image."""
    config = common.tfds_data("mnist", image_size=28, label_key="label", conditioning_key="image")
    batch = make_dataset(config).batch(np.arange(4))
    np.testing.assert_allclose(batch["conditioning_image"], (batch["image"] + 1) / 2, atol=1e-6)
    with pytest.raises(UserError, match="has no conditioning image feature 'edges'"):
        TfdsSource("mnist", conditioning_key="edges")
