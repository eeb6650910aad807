"""PNG files that carry how they were made, written whole."""

import os
import stat

import numpy as np
from PIL import Image

from jaxdiff.images import grid, read_png_text, save_png


def test_save_png_keeps_pixels_and_text_and_leaves_nothing_else(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "out" / "grid.png"
    save_png(path, grid(image, columns=2), {"prompt": "a red circle", "seed": 3}, scale=2)
    save_png(path, grid(image, columns=2), {"prompt": "a red circle", "seed": 4}, scale=2)
    assert read_png_text(path) == {"prompt": "a red circle", "seed": "4"}
    with Image.open(path) as picture:
        pixels = np.asarray(picture)
    np.testing.assert_array_equal(pixels[::2, ::2], grid(image, columns=2))
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_png_files_get_the_permissions_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        save_png(tmp_path / "grid.png", np.zeros((2, 2, 3), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "grid.png").stat().st_mode) == 0o644
