"""Image grids and PNG files that carry how they were made in their text chunks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from jaxdiff.atomic_write import atomic_path


def to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Float images with values in ``value_range`` (``(-1, 1)`` for networks' images, ``(0, 1)``
    for the pipelines') to uint8 in [0, 255], rounded and clipped."""
    low, high = value_range
    scaled = (np.asarray(images, np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images (see to_uint8), got {images.dtype}")
    return images


def grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tiles uint8 ``[N, H, W, 3]`` images row by row into one ``[rows*(H+pad)+pad, ..., 3]``
    image."""
    images = _uint8(images)
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[top : top + h, left : left + w] = image
    return canvas


def save_png(path: str | Path, image: np.ndarray, text: Mapping[str, object] = (), scale: int = 1):
    """Writes ``image`` as PNG with ``text`` in tEXt chunks, whole or not at all."""
    picture = Image.fromarray(_uint8(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    info = PngImagePlugin.PngInfo()
    for key, value in dict(text).items():
        info.add_text(key, str(value))
    with atomic_path(path) as partial:
        picture.save(partial, format="PNG", pnginfo=info)


def read_png_text(path: str | Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file."""
    with Image.open(path) as picture:
        return dict(picture.text)
