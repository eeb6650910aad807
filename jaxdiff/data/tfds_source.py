"""Any tensorflow-datasets image data set, read without TensorFlow through `tfds.data_source`.

`tfds.data_source` gives random access to a data set prepared in the ArrayRecord format (decoded
numpy records) by `jaxdiff.data.prepare` (``jaxdiff prepare-data NAME``). The caption is a text
feature (``caption_key``, "/" for nested features, a list of captions gives one per use) or the
class name of a label feature (``label_key``) put into ``caption_template``, e.g.
"a photo of a {}"; with neither the captions are empty (unconditional).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdiff.data.captions import vocabulary_of
from jaxdiff.data.prepare import open_builder, prepare_command
from jaxdiff.errors import UserError, first_line


class TfdsSource:
    """Random access to the (image, caption) records of one split of a tfds data set."""

    def __init__(
        self,
        tfds_name: str,
        *,
        split: str = "train",
        data_dir: str | None = None,
        image_key: str = "image",
        caption_key: str = "",
        label_key: str = "",
        caption_template: str = "{}",
        conditioning_key: str = "",
    ):
        import tensorflow_datasets as tfds

        self.name = f"tfds data set {tfds_name!r}"
        builder = open_builder(tfds_name, data_dir)
        features = builder.info.features
        splits = sorted(builder.info.splits)
        if splits and split.split("[")[0] not in splits:
            raise UserError(f"{self.name} has no split {split!r}; accepted: {', '.join(splits)}")
        for role, key in (
            ("image", image_key),
            ("caption", caption_key),
            ("label", label_key),
            ("conditioning image", conditioning_key),
        ):
            if key and _feature(features, key) is None:
                raise UserError(
                    f"{self.name} has no {role} feature {key!r}; features: "
                    f"{', '.join(features.keys())}"
                )
        if caption_key and label_key:
            raise UserError("give data.caption_key or data.label_key, not both")
        self.class_names: list[str] | None = None
        if label_key:
            names = getattr(_feature(features, label_key), "names", None)
            if not names:
                raise UserError(f"{self.name} feature {label_key!r} is not a class label")
            if "{}" not in caption_template:
                raise UserError(
                    f"data.caption_template {caption_template!r} must contain {{}} "
                    "for the class name"
                )
            self.class_names = [caption_template.format(name.replace("_", " ")) for name in names]
        self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
        self.conditioning_key = conditioning_key
        self._image_feature = _feature(features, image_key)
        try:
            self.records = tfds.data_source(
                tfds_name, split=split, data_dir=data_dir, download=False
            )
        except Exception as error:  # an unprepared data set fails in many ways
            state = "is not prepared" if not builder.is_prepared() else first_line(error)
            raise UserError(
                f"{self.name} split {split!r} cannot be read from {builder.data_dir}: {state}; "
                f"prepare it in ArrayRecord format with `{prepare_command(tfds_name, data_dir)}`"
            ) from None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.records[index]
        image = np.asarray(_feature(example, self.image_key))
        if self.label_key:
            caption: str | list[str] = self.class_names[int(_feature(example, self.label_key))]
        elif self.caption_key:
            caption = _text(_feature(example, self.caption_key))
        else:
            caption = ""
        record = {"image": image, "caption": caption}
        if self.conditioning_key:
            record["conditioning_image"] = np.asarray(_feature(example, self.conditioning_key))
        return record

    def image_shape(self) -> tuple[int, int] | None:
        shape = getattr(self._image_feature, "shape", None)
        if shape is None or None in shape[:2]:
            return None
        return int(shape[0]), int(shape[1])

    def vocabulary(self) -> list[str]:
        if self.caption_key:
            raise UserError(
                f"{self.name} has free-form captions; a word-level tokenizer needs a closed "
                "vocabulary (use class-name captions, data.label_key)"
            )
        return vocabulary_of(self.class_names or [])

    def word_groups(self) -> dict[str, list[str]]:
        return {}  # the class names' words are the whole vocabulary


def _feature(tree: Any, key: str) -> Any:
    """``tree["a"]["b"]`` for key "a/b", None when absent."""
    for part in key.split("/"):
        try:
            tree = tree[part]
        except (KeyError, TypeError):
            return None
    return tree


def _text(value: Any) -> str | list[str]:
    """A tfds text value (bytes, str, or an array of them) as str or a list of str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    return [_text(v) for v in np.asarray(value).reshape(-1).tolist()]
