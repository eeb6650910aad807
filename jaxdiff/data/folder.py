"""An image-caption folder: images beside a metadata file naming each one with its caption(s).

The layout of diffusers' training scripts (the `imagefolder` convention): one of
``captions.jsonl`` / ``metadata.jsonl`` (a JSON object per line) or ``metadata.csv`` (a header
row), each row giving an image path relative to the folder (column ``file_name``) and its caption
(column ``text``; in JSON also a list of captions, one drawn per use)::

    photos/
      captions.jsonl      {"file_name": "0001.jpg", "text": "a red bicycle against a wall"}
      0001.jpg
      more/0002.png

A ControlNet's data adds a conditioning image per row (diffusers' `train_controlnet.py` layout:
column ``conditioning_file_name``, set by ``data.conditioning_column``), read as
``conditioning_image`` beside the image.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxdiff.data.captions import vocabulary_of
from jaxdiff.errors import UserError

METADATA_FILES = ("captions.jsonl", "metadata.jsonl", "metadata.csv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class FolderSource:
    """Random access to the (image, caption) records of an image-caption folder."""

    def __init__(
        self,
        path: str | Path,
        image_column: str = "file_name",
        caption_column: str = "text",
        conditioning_column: str = "",
    ):
        self.root = Path(path)
        self.name = f"data folder {str(path)!r}"
        self.class_names = None  # free-form captions
        if not self.root.is_dir():
            raise UserError(f"{self.name} is not a directory")
        present = [name for name in METADATA_FILES if (self.root / name).is_file()]
        if not present:
            images = sum(1 for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UserError(
                    f"{self.name} is empty: it holds no images and no caption file "
                    f"({', '.join(METADATA_FILES)})"
                )
            raise UserError(
                f"{self.name} holds {images} images but no caption file; add one of "
                f"{', '.join(METADATA_FILES)} with a row per image naming its {image_column!r} "
                f"and {caption_column!r}"
            )
        if len(present) > 1:
            raise UserError(f"{self.name} holds {' and '.join(present)}; keep only one")
        self.metadata = self.root / present[0]
        rows = _read_rows(self.metadata)
        if not rows:
            raise UserError(f"{self.metadata} lists no images")
        self.files: list[Path] = []
        self.captions: list[str | list[str]] = []
        self.conditioning_files: list[Path] = []
        columns = [image_column, caption_column] + [conditioning_column] * bool(conditioning_column)
        for line, row in rows:
            where = f"{self.metadata} line {line}"
            for column in columns:
                if column not in row:
                    raise UserError(
                        f"{where} has no {column!r} field; it has {', '.join(map(repr, row))}"
                    )
            caption = row[caption_column]
            if not _is_caption(caption):
                raise UserError(
                    f"{where}: caption {caption!r} is not a string or a non-empty list of strings"
                )
            self.files.append(self._file(row[image_column], where))
            self.captions.append(caption)
            if conditioning_column:
                self.conditioning_files.append(self._file(row[conditioning_column], where))

    def _file(self, name: Any, where: str) -> Path:
        """The file a row names, inside the folder."""
        file = (self.root / str(name)).resolve()
        if not file.is_relative_to(self.root.resolve()):
            raise UserError(f"{where} names {name!r}, which is outside {self.name}")
        if not file.is_file():
            raise UserError(f"{where} names {name!r}, which is not a file in {self.name}")
        return file

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = {"image": _read_image(self.files[index]), "caption": self.captions[index]}
        if self.conditioning_files:
            record["conditioning_image"] = _read_image(self.conditioning_files[index])
        return record

    def image_shape(self) -> tuple[int, int] | None:
        """Read from the image headers alone; None when the sizes differ."""
        sizes = set()
        for file in self.files:
            with _open_image(file) as image:
                sizes.add((image.height, image.width))
            if len(sizes) > 1:
                return None
        return sizes.pop()

    def vocabulary(self) -> list[str]:
        return vocabulary_of(text for caption in self.captions for text in _caption_list(caption))

    def word_groups(self) -> dict[str, list[str]]:
        return {}  # free captions: no kinds of words


def _is_caption(caption: Any) -> bool:
    return isinstance(caption, str) or (
        isinstance(caption, list) and bool(caption) and all(isinstance(c, str) for c in caption)
    )


def _caption_list(caption: str | list[str]) -> list[str]:
    return [caption] if isinstance(caption, str) else caption


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each data row of a JSON-lines or CSV metadata file."""
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSV) is dropped
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
        return [(reader.line_num, dict(row)) for row in reader]
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {i} is not a JSON object")
        rows.append((i, row))
    return rows


def _open_image(file: Path) -> Image.Image:
    try:
        return Image.open(file)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{file} is not a readable image ({error})") from None


def _read_image(file: Path) -> np.ndarray:
    """uint8 `[H, W, 3]`."""
    with _open_image(file) as image:
        try:
            return np.asarray(image.convert("RGB"))
        except OSError as error:  # a truncated or corrupt file decodes only part way
            raise UserError(f"{file} is not a readable image ({error})") from None
