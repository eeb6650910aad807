"""Image grids and PNG files that carry how they were made in their text chunks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] to uint8 in [0, 255] (uint8 input passes through)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tiles ``[N, H, W, 3]`` images row by row into one ``[rows*(H+pad)+pad, ..., 3]`` image."""
    images = to_uint8(images)
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
    """Writes ``image`` as PNG with ``text`` in tEXt chunks, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(to_uint8(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    info = PngImagePlugin.PngInfo()
    for key, value in dict(text).items():
        info.add_text(key, str(value))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            picture.save(handle, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_png_text(path: str | Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file."""
    with Image.open(path) as picture:
        return dict(picture.text)
