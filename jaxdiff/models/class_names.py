"""The prompts of a class-conditional model: its class names.

A class-conditional denoiser (DiT) is conditioned on a class label instead of text. Its
"tokenizer" maps each prompt, a class name (or a class id), to the label, and the empty prompt to
the null class (label `len(names)`), which classifier-free guidance uses as its unconditional
branch, as the text models use the empty prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxdiff.atomic_write import write_atomically
from jaxdiff.errors import UserError, require

CLASS_NAMES_FILE = "class_names.json"


class ClassNames:
    """Class name <-> label for `len(names)` classes; label `len(names)` is the null class."""

    def __init__(self, names: Sequence[str]):
        require(len(names) > 0, "a class-conditional model needs at least one class name")
        self.names = [str(name) for name in names]
        self.ids = {name: i for i, name in enumerate(self.names)}
        require(
            len(self.ids) == len(self.names),
            f"class names must differ; {len(self.names) - len(self.ids)} repeat another",
        )
        require("" not in self.ids, "a class name is empty; the empty prompt is the null class")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def null_id(self) -> int:
        """The label of the empty prompt: the unconditional branch of guidance."""
        return len(self.names)

    def encode(self, prompts: Sequence[str | int]) -> np.ndarray:
        """The labels `[N, 1]` int32 of prompts: class names, class ids in [0, N) (ints or
        decimal strings; a name comes first) or "" (the null class). Raises UserError for
        anything else."""
        if isinstance(prompts, str):
            raise UserError(
                f"prompts must be a sequence of strings, got the single string {prompts!r}"
            )
        labels = np.empty((len(prompts), 1), np.int32)
        for row, prompt in enumerate(prompts):
            labels[row, 0] = self._label(prompt)
        return labels

    def _label(self, prompt: str | int) -> int:
        if prompt == "":
            return self.null_id
        if isinstance(prompt, str) and prompt in self.ids:
            return self.ids[prompt]
        if isinstance(prompt, str) and prompt.isdecimal():  # `jaxdiff sample --prompt 207`
            prompt = int(prompt)
        integer = isinstance(prompt, (int, np.integer)) and not isinstance(prompt, bool)
        if integer and 0 <= prompt < len(self.names):
            return int(prompt)
        shown = ", ".join(repr(name) for name in self.names[:5])
        more = ", ..." if len(self.names) > 5 else ""
        raise UserError(
            f"prompt {prompt!r} is not a class of this model; accepted: its class names "
            f"({shown}{more}), class ids in [0, {len(self.names)}), or '' (unconditional)"
        )

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the names to `directory/class_names.json`."""
        write_atomically(Path(directory) / CLASS_NAMES_FILE, json.dumps(self.names, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ClassNames:
        """The names `save` wrote to `directory`."""
        return cls(json.loads((Path(directory) / CLASS_NAMES_FILE).read_text()))
