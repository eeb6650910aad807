"""Overlapping tiles of an image, and the image put back together from what each tile became
(the x4 upscaler's tiling): a pixel one tile covers is that tile's; where tiles overlap, each
weighs in linearly less towards its edge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def origins(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles of one axis of `size` pixels start: every `tile - overlap` pixels, the last
    one moved back to end at the edge (so it may overlap more). One tile when it covers it all."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return [*starts, size - tile]


def blend(
    tiles: Sequence[np.ndarray],
    corners: Sequence[tuple[int, int]],
    size: tuple[int, int],
    overlap: int,
) -> np.ndarray:
    """The images `[B, H, W, C]` of `size` (H, W) put together from `tiles` (each `[B, h, w, C]`)
    whose top-left pixels are `corners` (y, x): each pixel the weighted mean of the tiles that
    cover it, a tile's weight ramping up linearly over its first and last `overlap` pixels on
    the sides another tile covers (1 elsewhere)."""
    height, width = size
    first = tiles[0]
    total = np.zeros((first.shape[0], height, width, first.shape[-1]), np.float64)
    weight = np.zeros((height, width, 1), np.float64)
    for tile, (y, x) in zip(tiles, corners, strict=True):
        h, w = tile.shape[1:3]
        ramp = np.outer(
            _ramp(h, overlap, y > 0, y + h < height), _ramp(w, overlap, x > 0, x + w < width)
        )
        total[:, y : y + h, x : x + w] += tile * ramp[..., None]
        weight[y : y + h, x : x + w] += ramp[..., None]
    return (total / weight).astype(first.dtype)


def _ramp(length: int, overlap: int, rises: bool, falls: bool) -> np.ndarray:
    """Weights `[length]`: (i + 1/2) / overlap over the first `overlap` pixels when `rises`, the
    mirror over the last when `falls`, 1 elsewhere."""
    ramp = np.ones(length)
    edge = (np.arange(min(overlap, length)) + 0.5) / max(overlap, 1)
    if rises:
        ramp[: len(edge)] = np.minimum(ramp[: len(edge)], edge)
    if falls:
        ramp[length - len(edge) :] = np.minimum(ramp[length - len(edge) :], edge[::-1])
    return ramp
