"""The attributes of `shapes` images: read (shape, colour, position) back from an image.

A fixed, training-free reader (no network to train or download); `prompt_adherence` scores
text-to-image models trained on `jaxdiff.data.shapes` with it:

1. Foreground: the background is grey, so a pixel's saturation (max - min channel) marks the
   shape; blending a colour with grey scales its saturation, so saturation is proportional to
   coverage. Threshold it, keep the largest connected component (dropping spurious blobs), and
   take the background-subtracted saturation over that component and a rim around it.
2. Colour: the hue of the saturation-weighted mean colour, matched to the nearest palette hue.
   Blending with grey changes no hue, so soft or blurry edges do not bias it.
3. Shape: each of circle, square and triangle, at a few blur widths, is rendered with the
   dataset's renderer at the foreground's centroid, sized so its spread (second moment plus the
   blur's) matches the foreground's, then scaled by least squares; the smallest relative squared
   residual wins. Matching spread rather than area makes the fit independent of how saturated
   the colour is and tolerant of blurry generated images.
4. Position: the fitted shape's centre, matched to the nearest region centre.

A column is -1 when there is no shape, or the reading is ambiguous (a hue between two palette
hues, a centre between two regions, a blob that fits no template).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxdiff.data.shapes import ANCHORS, PALETTE, SHAPE_SPREADS, TRIANGLE_HEIGHT, shape_coverage
from jaxdiff.errors import UserError

# Saturation (max - min channel, in [0, 1]) a pixel needs to count as foreground: at least this,
# and at least half the image's 99th saturation percentile.
_MIN_SATURATION = 0.12
# Smallest shape, as a fraction of the image (a dataset shape covers more than 3%).
_MIN_AREA_FRACTION = 0.01
_MIN_AREA_PIXELS = 3
# Width in pixels of the rim around the component that still counts (soft and blurred edges).
_RIM = 2
# Gaussian blur widths, in pixels, the shape templates are tried at.
_BLURS = (0.0, 0.5, 1.0, 1.5)
# Largest hue distance, in degrees, to the nearest palette hue (neighbours are ~60 apart).
_MAX_HUE_DISTANCE = 25.0
# Smallest gap, in units of the image side, between the two nearest region centres' distances.
_MIN_POSITION_MARGIN = 0.05
# Largest relative squared residual of the best template; above it the blob is no shape.
_MAX_TEMPLATE_ERROR = 0.35
# Same-image 8-connectivity; no connection across the batch axis.
_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_CONNECTIVITY[1] = True


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue angle in degrees [0, 360) of RGB colours `[..., 3]` (any scale): `[...]`.

    The polar angle in the chromaticity plane orthogonal to the grey axis (Hanbury 2008); it
    agrees with the HSV hue at primaries and secondaries, and is unchanged by adding grey.
    """
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


_PALETTE_HUES = _hue(PALETTE)  # [6]


def _to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 `[N, S, S, 3]` in [0, 255] or float in [-1, 1] -> float32 in [0, 1]."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[1] != array.shape[2]:
        raise UserError(f"images must be square RGB of shape [N, H, H, 3], got {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"images must be uint8 in [0, 255] or float in [-1, 1], got {array.dtype}")
    return np.clip((array.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _largest_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest connected component of each image's mask `[N, H, W]`, and its area `[N]`."""
    labels, count = ndimage.label(mask, structure=_CONNECTIVITY)  # [N, H, W]
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]  # [count]
    owner = np.zeros(count, dtype=np.int64)  # the image each label lies in
    image_index = np.broadcast_to(np.arange(len(mask))[:, None, None], mask.shape)
    owner[labels[mask] - 1] = image_index[mask]
    order = np.lexsort((-areas, owner))  # by image, then largest first
    images, first = np.unique(owner[order], return_index=True)
    best = np.zeros(len(mask), dtype=np.int64)  # 0: no component
    best[images] = order[first] + 1
    area = np.zeros(len(mask), dtype=np.int64)
    area[images] = areas[order[first]]
    component = (labels == best[:, None, None]) & (best[:, None, None] > 0)
    return component, area


def _foreground(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground of those images `[N, S, S, 3]` that show a shape.

    Returns the region `[M, S, S]` (the largest saturated component and its rim), the weights
    `[M, S, S]` (saturation above the background's over the region, zero elsewhere; noise may
    dip them slightly below zero) and the rows `[M]` of the images they belong to.
    """
    n, size = x.shape[0], x.shape[1]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]  # [N, S, S] each (faster than a size-3 reduction)
    saturation = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    peak = np.percentile(saturation.reshape(n, -1), 99.0, axis=1)  # [N]
    threshold = np.maximum(_MIN_SATURATION, 0.5 * peak)
    component, area = _largest_components(saturation > threshold[:, None, None])
    rows = np.flatnonzero(area >= max(_MIN_AREA_PIXELS, _MIN_AREA_FRACTION * size * size))
    if not len(rows):
        empty = np.zeros((0, size, size), dtype=np.float32)
        return empty.astype(bool), empty, rows
    saturation, component = saturation[rows], component[rows]
    region = ndimage.binary_dilation(component, structure=_CONNECTIVITY, iterations=_RIM)
    # Background level: the mean unsaturated saturation outside the region (noise, grain).
    quiet = ~region & (saturation <= threshold[rows, None, None])  # [M, S, S]
    count = np.maximum(quiet.sum(axis=(1, 2)), 1)  # [M]
    background = (saturation * quiet).sum(axis=(1, 2)) / count  # [M]
    return region, (saturation - background[:, None, None]) * region, rows


def _crop(region: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square windows `[M, C, C]` of the region and weights `[M, S, S]`, and their origins `[M, 2]`.

    One window size C (at most S) fits every image's region with a margin for blurred
    templates; an origin is the window's top-left pixel (x, y).
    """
    m, size = weight.shape[0], weight.shape[1]
    spans = []
    for axis in (1, 2):  # x, then y
        occupied = region.any(axis=axis)  # [M, S]
        first = np.argmax(occupied, axis=1)
        last = size - 1 - np.argmax(occupied[:, ::-1], axis=1)
        spans.append((first, last))
    extent = max(int((last - first).max()) + 1 for first, last in spans)
    window = min(size, extent + 2 * int(np.ceil(2 * max(_BLURS))))
    origin = np.stack(
        [np.clip((first + last + 1 - window) // 2, 0, size - window) for first, last in spans],
        axis=1,
    )  # [M, 2]
    offsets = np.arange(window)
    cols = origin[:, 0, None] + offsets  # [M, C]
    rows = origin[:, 1, None] + offsets
    index = (np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :])
    return region[index], weight[index], origin


def _fit_shapes(region: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Template fit of each shape to the foreground weights `[M, S, S]` over their region.

    Returns each shape's relative squared residual `[M, 3]` (best over the blur widths) and its
    fitted bounding-box centre `[M, 3, 2]` (x, y) in units of the image side. The fit runs on a
    window around the foreground; shapes render in window units, pixel for pixel the same.
    """
    m, size = weight.shape[0], weight.shape[1]
    support, crops, origin = _crop(region, weight)  # [M, C, C], [M, C, C], [M, 2]
    window = crops.shape[1]
    pixels = np.arange(window, dtype=np.float32) + 0.5  # [C]
    gx = (origin[:, 0, None] + pixels) / size  # [M, C] x of each window column, image units
    gy = (origin[:, 1, None] + pixels) / size  # [M, C]
    mass = np.maximum(crops.sum(axis=(1, 2)), 1e-6)  # [M]
    cx = (crops * gx[:, None, :]).sum(axis=(1, 2)) / mass  # [M]
    cy = (crops * gy[:, :, None]).sum(axis=(1, 2)) / mass
    dx2 = (gx - cx[:, None])[:, None, :] ** 2  # [M, 1, C]
    dy2 = (gy - cy[:, None])[:, :, None] ** 2  # [M, C, 1]
    spread = (crops * (dx2 + dy2)).sum(axis=(1, 2)) / mass  # [M]
    energy = np.maximum((crops * crops).sum(axis=(1, 2)), 1e-12)  # [M]

    errors = np.full((m, 3), np.inf, dtype=np.float32)
    centres = np.zeros((m, 3, 2), dtype=np.float32)
    for kind, kind_spread in enumerate(SHAPE_SPREADS):
        for blur in _BLURS:
            shape_spread = spread - 2.0 * (blur / size) ** 2  # [M]
            radius = np.sqrt(np.maximum(shape_spread, 1e-8) / kind_spread)  # [M]
            centre = np.stack([cx, cy], axis=1)  # [M, 2]
            if kind == 2:  # the triangle's centroid lies H/6 below its bounding-box centre
                centre[:, 1] -= TRIANGLE_HEIGHT * radius / 6.0
            template = shape_coverage(
                np.full(m, kind), (centre * size - origin) / window, radius * size / window, window
            )  # [M, C, C]
            if blur:
                template = ndimage.gaussian_filter(template, (0.0, blur, blur), mode="constant")
            template *= support
            scale = (crops * template).sum(axis=(1, 2)) / np.maximum(
                (template * template).sum(axis=(1, 2)), 1e-12
            )  # [M]
            residual = crops - scale[:, None, None] * template
            error = (residual * residual).sum(axis=(1, 2)) / energy  # [M]
            error = np.where(shape_spread > 0, error, np.inf)
            better = error < errors[:, kind]
            errors[:, kind] = np.where(better, error, errors[:, kind])
            centres[better, kind] = centre[better]
    return errors, centres


def read_attributes(images: np.ndarray) -> np.ndarray:
    """(shape, colour, position) ids read from images: `[N, 3]` int32, -1 where unreadable.

    `images` is uint8 `[N, S, S, 3]` in [0, 255] or float in [-1, 1]; the reader is tuned for
    the dataset's sizes (16 pixels and up).
    """
    x = _to_unit(images)  # [N, S, S, 3]
    result = np.full((len(x), 3), -1, dtype=np.int32)
    if not len(x):
        return result
    region, weight, rows = _foreground(x)  # [M, S, S], [M, S, S], [M]
    if not len(rows):
        return result
    every = np.arange(len(rows))

    # Colour: nearest palette hue of the weighted mean colour.
    positive = np.maximum(weight, 0.0)  # [M, S, S]
    mean_colour = np.einsum("mhw,mhwc->mc", positive, x[rows]) / positive.sum(axis=(1, 2))[:, None]
    hue_distance = np.abs(_hue(mean_colour)[:, None] - _PALETTE_HUES[None, :])  # [M, 6]
    hue_distance = np.minimum(hue_distance, 360.0 - hue_distance)
    colour = np.argmin(hue_distance, axis=1)  # [M]
    colour_ok = hue_distance[every, colour] <= _MAX_HUE_DISTANCE

    errors, centres = _fit_shapes(region, weight)  # [M, 3], [M, 3, 2]
    shape = np.argmin(errors, axis=1)  # [M]
    shape_ok = errors[every, shape] <= _MAX_TEMPLATE_ERROR

    # Position: nearest region centre to the fitted shape's centre (read even for odd blobs).
    centre = centres[every, shape]  # [M, 2]
    distance = np.linalg.norm(centre[:, None, :] - ANCHORS[None, :, :], axis=-1)  # [M, 5]
    position = np.argmin(distance, axis=1)  # [M]
    nearest = np.sort(distance, axis=1)
    position_ok = nearest[:, 1] - nearest[:, 0] >= _MIN_POSITION_MARGIN

    result[rows, 0] = np.where(shape_ok, shape, -1)
    result[rows, 1] = np.where(colour_ok, colour, -1)
    result[rows, 2] = np.where(position_ok, position, -1)
    return result
