"""Pieces shared by the configs: the data sets, and the groups every config holds (``base``,
``training``: ``jaxdiff.config_groups``, which a saved workdir config is checked against)."""

from __future__ import annotations

import ml_collections

from jaxdiff.config_groups import base, stream, training, transform
from jaxdiff.errors import UserError

__all__ = [
    "SHAPES_HOLDOUT",
    "VARIANTS",
    "base",
    "check_variant",
    "folder_data",
    "shapes_data",
    "tfds_data",
    "training",
]

# Combinations never shown in training: each shape, colour and position still appears in others.
SHAPES_HOLDOUT = (
    "green triangle top right; blue circle center; red square bottom left; "
    "yellow circle bottom right; magenta triangle top left; cyan square center"
)


def shapes_data(
    image_size: int = 32, holdout: str = SHAPES_HOLDOUT, conditioning: str = ""
) -> ml_collections.ConfigDict:
    """The embedded captioned ``shapes`` data set (already random: not shuffled); with
    ``conditioning`` ("mask" or "edges") each example has a ControlNet conditioning image."""
    return ml_collections.ConfigDict(
        {
            "name": "shapes",
            **transform(image_size),
            **stream(shuffle=False, threads=0),
            "background": "textured",
            "holdout": holdout,
            "conditioning": conditioning,
        }
    )


def folder_data(
    path: str,
    image_size: int,
    crop: str = "center",
    flip: bool = False,
    conditioning_column: str = "",
) -> ml_collections.ConfigDict:
    """An image-caption folder (``captions.jsonl`` / ``metadata.jsonl`` / ``metadata.csv``);
    ``conditioning_column`` names each row's ControlNet conditioning image ("": none)."""
    return ml_collections.ConfigDict(
        {
            "name": "folder",
            "path": path,
            "image_column": "file_name",
            "caption_column": "text",
            "conditioning_column": conditioning_column,
            **transform(image_size, resize=True, crop=crop, flip=flip),
            **stream(shuffle=True, threads=8),
        }
    )


def tfds_data(
    tfds_name: str,
    image_size: int,
    *,
    split: str = "train",
    caption_key: str = "",
    label_key: str = "",
    caption_template: str = "{}",
    resize: bool = False,
    flip: bool = False,
    conditioning_key: str = "",
) -> ml_collections.ConfigDict:
    """A tfds data set prepared as ArrayRecord, captioned by a text feature or class names;
    ``conditioning_key`` names a ControlNet conditioning image feature ("": none)."""
    return ml_collections.ConfigDict(
        {
            "name": "tfds",
            "tfds_name": tfds_name,
            "split": split,
            "data_dir": "",  # "" is tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
            "image_key": "image",
            "caption_key": caption_key,
            "label_key": label_key,
            "caption_template": caption_template,
            "conditioning_key": conditioning_key,
            **transform(image_size, resize=resize, flip=flip),
            **stream(shuffle=True, threads=4),
        }
    )


VARIANTS = (None, "tiny")


def check_variant(arg: str | None) -> None:
    """Every config has the full variant (no argument) and ``tiny``."""
    if arg not in VARIANTS:
        raise UserError(f"unknown config variant {arg!r}; accepted: tiny (or none)")
