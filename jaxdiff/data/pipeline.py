"""Image-caption data through grain: a record source, shuffled per epoch, repeated, transformed.

A *source* is random access (`len`, `source[i]`) to records `{"image": uint8 [H, W, C],
"caption": str or a list of str, ...}`, with a `conditioning_image` of the image's size for a
ControlNet's data: the embedded `shapes`, an image-caption folder
(`jaxdiff.data.folder`) or any tfds image data set (`jaxdiff.data.tfds_source`). A grain
`MapDataset` shuffles it (a new order every epoch), repeats it without end and applies the
`ImageTransform` (resize, center / random crop, flip, one caption of several) with randomness drawn
from (seed, position).

The training stream is read by position: `ImageTextDataset.batch(positions)` is a function of the
positions alone, so the data position saved in a checkpoint is the whole iterator state, a resumed
run reads exactly what the uninterrupted one would have, and each process reads only the rows its
devices hold (`jaxdiff.parallel.process_rows`). ``threads`` > 0 reads and decodes the records of a
batch concurrently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grain
import ml_collections
import numpy as np
from PIL import Image

from jaxdiff.data.indices import check_indices
from jaxdiff.errors import UserError, check_choice, require

CROPS = ("center", "random")
SOURCES = ("shapes", "folder", "tfds")
RESIZE_FILTER = Image.Resampling.BILINEAR  # as diffusers' training scripts resize


class Source(Protocol):
    """Random access to the records of a data set."""

    name: str  # how messages name the data set, e.g. "data folder 'photos'"
    # The caption of each class label, in label order (a class-conditional model's classes);
    # None when the records carry no class label.
    class_names: list[str] | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def image_shape(self) -> tuple[int, int] | None:
        """(height, width) shared by every image, or None when the sizes differ."""

    def vocabulary(self) -> list[str]:
        """Every word of every caption, for a word-level tokenizer (UserError if unknown)."""

    def word_groups(self) -> dict[str, list[str]]:
        """Words of the vocabulary by kind (e.g. shapes, colours), which errors list; may be {}."""


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 `[H, W]`, `[H, W, 1]`, `[H, W, 3]` or `[H, W, 4]` -> `[H, W, 3]` (alpha dropped)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise UserError(f"image of shape {image.shape} is not [H, W] or [H, W, 1|3|4]")
    if image.dtype != np.uint8:
        raise UserError(f"image of dtype {image.dtype} is not uint8")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Square `size` x `size` RGB images and one caption per record.

    With ``resize`` the shorter side is scaled to ``size`` (bilinear, antialiased when shrinking)
    and the longer one cropped, at the center or at a random offset; without it every image must
    already be ``size`` x ``size``. ``flip`` mirrors half the images left-right.
    """

    size: int
    resize: bool = False
    crop: str = "center"
    flip: bool = False

    def __post_init__(self) -> None:
        require(self.size > 0, f"data.image_size must be > 0, got {self.size}")
        check_choice("data.crop", self.crop, CROPS)

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The record with its image (and conditioning image, the same crop and flip) square
        and one caption."""
        pictures = {"image": as_rgb(record["image"])}  # [H, W, 3]
        if "conditioning_image" in record:
            pictures["conditioning_image"] = as_rgb(record["conditioning_image"])
            shapes = {k: v.shape[:2] for k, v in pictures.items()}
            if len(set(shapes.values())) > 1:
                raise UserError(
                    f"conditioning image of size {'x'.join(map(str, shapes['conditioning_image']))}"
                    f" for an image of size {'x'.join(map(str, shapes['image']))}; accepted: "
                    "the image's size"
                )
        height, width = pictures["image"].shape[:2]
        size = self.size
        if self.resize:
            scale = size / min(height, width)
            target = (max(size, round(width * scale)), max(size, round(height * scale)))
            if target != (width, height):
                pictures = {
                    k: np.asarray(Image.fromarray(v).resize(target, RESIZE_FILTER))
                    for k, v in pictures.items()
                }
            height, width = pictures["image"].shape[:2]
        elif (height, width) != (size, size):
            raise UserError(
                f"image of size {height}x{width} is not data.image_size {size}x{size}; "
                "set data.resize=True to resize and crop images"
            )
        top, left = (height - size) // 2, (width - size) // 2
        if self.crop == "random":
            top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        flip = self.flip and rng.random() < 0.5
        for key, picture in pictures.items():
            picture = picture[top : top + size, left : left + size]  # [S, S, 3]
            pictures[key] = np.ascontiguousarray(picture[:, ::-1] if flip else picture)
        caption = record["caption"]
        if not isinstance(caption, str):
            caption = caption[int(rng.integers(len(caption)))] if len(caption) else ""
        return {**record, **pictures, "caption": caption}


class ImageTextDataset:
    """The endless, per-epoch shuffled, transformed stream of a source's records (grain)."""

    def __init__(
        self,
        source: Source,
        transform: ImageTransform,
        *,
        seed: int = 0,
        shuffle: bool = True,
        threads: int = 0,
    ):
        require(len(source) > 0, f"{source.name} holds no examples")
        require(threads >= 0, f"data.threads must be >= 0, got {threads}")
        self.source = source
        self.transform = transform
        records = grain.MapDataset.source(source)
        indices = grain.MapDataset.range(len(source))  # the same order, as record indices
        if shuffle:
            records, indices = records.shuffle(seed=seed), indices.shuffle(seed=seed)
        self.records = records.repeat(None).random_map(transform, seed=seed)
        self._indices = indices.repeat(None)
        self._pool = ThreadPoolExecutor(threads) if threads else None

    @property
    def image_size(self) -> int:
        return self.transform.size

    def unaugmented(self) -> ImageTextDataset:
        """The same source's records in order, center-cropped and unflipped: position i is
        record i, read the same every time."""
        transform = dataclasses.replace(self.transform, crop="center", flip=False)
        return ImageTextDataset(self.source, transform, shuffle=False)

    def batches(self, positions: range, batch_size: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(start, batch)`` for each run of ``batch_size`` of ``positions`` (see ``batch``)."""
        for start in range(positions.start, positions.stop, batch_size):
            yield start, self.batch(np.arange(start, min(positions.stop, start + batch_size)))

    def examples(self, positions: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The transformed records at stream ``positions`` (1-D, non-negative)."""
        read = self.records.__getitem__
        indices = check_indices(positions, "position").tolist()
        return list(self._pool.map(read, indices) if self._pool else map(read, indices))

    def source_indices(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The source record read at each stream position: `[N]` int64."""
        return np.array([self._indices[i] for i in check_indices(positions, "position").tolist()])

    def batch(self, positions: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """`image` float32 in [-1, 1] `[N, S, S, 3]`, `caption` (N strings), a
        `conditioning_image` float32 in [0, 1] `[N, S, S, 3]` if the records have one, and any
        other record fields stacked `[N, ...]`."""
        records = self.examples(positions)
        if not records:
            size = self.transform.size
            return {"image": np.zeros((0, size, size, 3), np.float32), "caption": []}
        batch: dict[str, Any] = {
            key: np.stack([r[key] for r in records])
            for key in records[0]
            if key not in ("image", "caption")
        }
        images = np.stack([r["image"] for r in records])  # [N, S, S, 3] uint8
        batch["image"] = images.astype(np.float32) / 127.5 - 1.0
        if "conditioning_image" in batch:  # [N, S, S, 3] in [0, 1], as ControlNets read it
            batch["conditioning_image"] = batch["conditioning_image"].astype(np.float32) / 255.0
        batch["caption"] = [r["caption"] for r in records]
        return batch

    def vocabulary(self) -> list[str]:
        return self.source.vocabulary()

    def word_groups(self) -> dict[str, list[str]]:
        return self.source.word_groups()


def make_source(data: ml_collections.ConfigDict) -> Source:
    """The record source ``config.data`` names (``data.name``: shapes, folder or tfds); its
    conditioning field ("" when a saved config has none) adds ControlNet conditioning images."""
    check_choice("data.name", data.name, SOURCES)
    if data.name == "shapes":
        from jaxdiff.data.shapes import ShapesDataset, parse_holdout

        return ShapesDataset(
            image_size=data.image_size,
            seed=data.seed,
            holdout=parse_holdout(data.holdout),
            background=data.background,
            conditioning=data.get("conditioning", ""),
        )
    if data.name == "folder":
        from jaxdiff.data.folder import FolderSource

        require(
            bool(data.path),
            "data.path is empty; give the image-caption folder: --config.data.path=FOLDER",
        )
        return FolderSource(
            data.path, data.image_column, data.caption_column, data.get("conditioning_column", "")
        )
    from jaxdiff.data.tfds_source import TfdsSource

    return TfdsSource(
        data.tfds_name,
        split=data.split,
        data_dir=data.data_dir or None,
        image_key=data.image_key,
        caption_key=data.caption_key,
        label_key=data.label_key,
        caption_template=data.caption_template,
        conditioning_key=data.get("conditioning_key", ""),
    )


def make_dataset(data: ml_collections.ConfigDict) -> ImageTextDataset:
    """The training stream ``config.data`` describes: its source, transform and shuffling."""
    transform = ImageTransform(data.image_size, data.resize, data.crop, data.flip)
    source = make_source(data)
    if not data.resize:
        shape = source.image_shape()
        size = data.image_size
        if shape is None:
            raise UserError(
                f"{source.name} holds images of different sizes; set data.resize=True to resize "
                f"and crop them to data.image_size {size}"
            )
        if shape != (size, size):
            raise UserError(
                f"{source.name} holds {shape[0]}x{shape[1]} images, not data.image_size "
                f"{size}x{size}; set data.resize=True to resize and crop them"
            )
    return ImageTextDataset(
        source, transform, seed=data.seed, shuffle=data.shuffle, threads=data.threads
    )
