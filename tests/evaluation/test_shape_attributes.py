"""The attribute reader of `shapes` images behind the prompt-adherence metric, on the dataset's
own images."""

import numpy as np
import pytest
from scipy import ndimage

from jaxdiff.data.shapes import COLOURS, ShapesDataset
from jaxdiff.errors import UserError
from jaxdiff.evaluation.shape_attributes import read_attributes

N = 2000


def _accuracy(images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Per-attribute and all-three accuracy: `[4]`."""
    correct = read_attributes(images) == attributes
    return np.append(correct.mean(axis=0), correct.all(axis=1).mean())


@pytest.mark.parametrize("background", ["plain", "textured"])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_reads_the_dataset(size: int, background: str) -> None:
    data = ShapesDataset(image_size=size, seed=11, background=background)
    images = data.images(np.arange(N))  # uint8
    accuracy = _accuracy(images, data.attributes(np.arange(N)))
    print(f"{size}px {background}: shape/colour/position/all = {accuracy.round(4)}")
    assert accuracy.min() >= 0.99


@pytest.mark.parametrize("background", ["plain", "textured"])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_reads_noisy_images(size: int, background: str) -> None:
    batch = ShapesDataset(image_size=size, seed=12, background=background).batch(np.arange(500))
    noise = np.random.default_rng(size).normal(0.0, 0.05, batch["image"].shape)
    accuracy = _accuracy((batch["image"] + noise).astype(np.float32), batch["attributes"])
    print(f"{size}px {background} + noise 0.05: {accuracy.round(4)}")
    assert accuracy.min() >= 0.99


def test_blurry_images_and_spurious_blobs() -> None:
    data = ShapesDataset(image_size=32, seed=12)
    batch = data.batch(np.arange(500))
    blurry = ndimage.gaussian_filter(batch["image"], (0, 1.0, 1.0, 0))
    assert _accuracy(blurry, batch["attributes"]).min() >= 0.98
    blotched = batch["image"].copy()
    corners = np.random.default_rng(0).integers(0, 30, size=(500, 2))
    for image, (y, x) in zip(blotched, corners, strict=True):
        image[y : y + 2, x : x + 2] = [0.8, -0.8, 0.8]  # a small magenta blob
    assert _accuracy(blotched, batch["attributes"]).min() >= 0.97


def test_blank_images_read_as_minus_one() -> None:
    noise = np.random.default_rng(1).normal(0.0, 0.05, (4, 32, 32, 3)).astype(np.float32)
    blank = np.concatenate([np.full((2, 32, 32, 3), -0.3, np.float32), noise - 0.2])
    np.testing.assert_array_equal(read_attributes(blank), -1)
    np.testing.assert_array_equal(read_attributes(np.full((1, 16, 16, 3), 90, np.uint8)), -1)
    assert read_attributes(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 3)


def test_odd_blobs_have_no_shape() -> None:
    grid = (np.arange(32) + 0.5) / 32
    x, y = np.meshgrid(grid, grid)
    ring = np.abs(np.hypot(x - 0.27, y - 0.27) - 0.15) < 0.04
    bar = (np.abs(x - 0.73) < 0.2) & (np.abs(y - 0.73) < 0.03)
    images = np.full((2, 32, 32, 3), -0.4, np.float32)
    images[0][ring] = images[1][bar] = [-0.8, -0.8, 0.9]  # blue
    read = read_attributes(images)
    np.testing.assert_array_equal(read[:, 0], -1)
    np.testing.assert_array_equal(read[:, 1], COLOURS.index("blue"))
    np.testing.assert_array_equal(read[:, 2], [0, 3])


def test_bad_input() -> None:
    with pytest.raises(UserError, match=r"\[N, H, H, 3\]"):
        read_attributes(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(UserError, match="int64"):
        read_attributes(np.zeros((2, 32, 32, 3), np.int64))
