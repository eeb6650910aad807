"""Images and masks into the pipelines, and images out.

Inputs are PIL images or numpy arrays, one or a batch: images `[H, W, 3]` / `[N, H, W, 3]`, uint8
or float in [0, 1]; masks `[H, W]` / `[H, W, 1]` / `[N, H, W]` / `[N, H, W, 1]` or "L" images,
white (1) where the pipeline paints. They become float32 NHWC arrays: images in [-1, 1], masks
binarized at 0.5 as diffusers' mask processor does. Sizes are never changed silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from jaxdiff.errors import UserError, require

OUTPUT_TYPES = ("np", "pil", "latent")


def as_batch(value: Any, what: str, channels: int) -> np.ndarray:
    """PIL image(s) or array -> float32 [N, H, W, C] in [0, 1]; `what` names it in errors."""
    if isinstance(value, Image.Image) or (
        isinstance(value, list | tuple) and value and isinstance(value[0], Image.Image)
    ):
        mode = "RGB" if channels == 3 else "L"
        pictures = [value] if isinstance(value, Image.Image) else list(value)
        sizes = {p.size for p in pictures}
        require(len(sizes) == 1, f"{what} images of different sizes {sorted(sizes)}")
        array = np.stack([np.asarray(p.convert(mode)) for p in pictures])
    else:
        array = np.asarray(value)
    if channels == 1 and array.ndim in (2, 3) and (array.ndim == 2 or array.shape[-1] != 1):
        array = array[..., None]  # [H, W] or [N, H, W] -> [..., 1]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != channels:
        raise UserError(
            f"{what} of shape {array.shape}; accepted: [H, W, {channels}] or [N, H, W, "
            f"{channels}]{' (or without the last axis)' if channels == 1 else ''}, or PIL images"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if not (np.all(np.isfinite(array)) and array.min() >= 0.0 and array.max() <= 1.0):
        raise UserError(f"{what} values in [{array.min()}, {array.max()}]; accepted: [0, 1]")
    return array


def _check_size(height: int, width: int, factor: int, what: str) -> None:
    if height % factor or width % factor:
        raise UserError(
            f"{what} of size {height}x{width}; height and width must be multiples of {factor} "
            "(the VAE's downsampling factor)"
        )


def check_size(height: int, width: int, factor: int) -> None:
    """UserError unless the image size divides into latents."""
    require(height > 0 and width > 0, f"height={height}, width={width} must be positive")
    _check_size(height, width, factor, "images")


def image_batch(image: Any, count: int, factor: int) -> np.ndarray:
    """One image or `count` images -> `[count, H, W, 3]` float32 in [-1, 1]."""
    images = as_batch(image, "image", 3)
    require(
        images.shape[0] in (1, count),
        f"{images.shape[0]} images for {count} prompts; give one image or one per prompt",
    )
    _check_size(images.shape[1], images.shape[2], factor, "image")
    return np.broadcast_to(images * 2.0 - 1.0, (count, *images.shape[1:]))


def latent_batch(latents: Any, count: int, channels: int, repeat: int = 1) -> np.ndarray:
    """One latent image, `count` (one per prompt) or `count * repeat` of them (one per image
    made, as a pipeline with `num_images_per_prompt=repeat` returns them) -> `[count, h, w,
    channels]` or `[count * repeat, h, w, channels]` float32, as given."""
    array = np.asarray(latents, np.float32)
    array = array[None] if array.ndim == 3 else array
    require(
        array.ndim == 4 and array.shape[-1] == channels and np.all(np.isfinite(array)),
        f"latents of shape {array.shape}; accepted: finite [h, w, {channels}] or "
        f"[N, h, w, {channels}]",
    )
    accepted = sorted({1, count, count * repeat})
    require(
        array.shape[0] in accepted,
        f"{array.shape[0]} latent images for {count} prompts x {repeat} images; accepted: "
        f"{' or '.join(map(str, accepted))}",
    )
    rows = count if array.shape[0] == 1 else array.shape[0]
    return np.broadcast_to(array, (rows, *array.shape[1:]))


def mask_batch(mask: Any, images: np.ndarray) -> np.ndarray:
    """One mask or one per image -> `[N, H, W, 1]` float32 of 0 and 1 (1: paint)."""
    masks = as_batch(mask, "mask", 1)
    require(
        masks.shape[1:3] == images.shape[1:3],
        f"mask of size {masks.shape[1]}x{masks.shape[2]} for an image of size "
        f"{images.shape[1]}x{images.shape[2]}; give a mask of the image's size",
    )
    require(
        masks.shape[0] in (1, images.shape[0]),
        f"{masks.shape[0]} masks for {images.shape[0]} images; give one mask or one per image",
    )
    return np.broadcast_to((masks >= 0.5).astype(np.float32), (images.shape[0], *masks.shape[1:]))


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise UserError(f"output_type={output_type!r}; accepted: {', '.join(OUTPUT_TYPES)}")


def to_output(images: np.ndarray, output_type: str) -> np.ndarray | list[Image.Image]:
    """float32 `[N, H, W, 3]` in [0, 1] as they are ("np") or as PIL images ("pil")."""
    if output_type == "np":
        return images
    return [Image.fromarray(np.round(image * 255.0).astype(np.uint8)) for image in images]
