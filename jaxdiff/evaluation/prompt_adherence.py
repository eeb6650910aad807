"""Prompt adherence of a text-to-image model on ``shapes``: sample every (shape, colour,
position) prompt and read the attributes back from the images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from jaxdiff.data.shapes import COLOURS, POSITIONS, SHAPES, prompt
from jaxdiff.evaluation.shape_attributes import read_attributes

ATTRIBUTES = ("shape", "colour", "position")


def prompts_and_targets(
    combinations: Sequence[tuple[str, str, str]], samples_per_prompt: int
) -> tuple[list[str], np.ndarray]:
    """The canonical prompt of each combination, ``samples_per_prompt`` times in a row, and the
    attributes each image should have: ``[N, 3]`` int32 (shape, colour, position indices)."""
    targets = np.array(
        [
            (SHAPES.index(s), COLOURS.index(c), POSITIONS.index(p))
            for s, c, p in combinations
            for _ in range(samples_per_prompt)
        ],
        dtype=np.int32,
    )  # [N, 3]
    prompts = [prompt(s, c, p) for s, c, p in combinations for _ in range(samples_per_prompt)]
    return prompts, targets


def generated_batches(
    generate: Callable[..., np.ndarray],
    prompts: Sequence[str],
    seed: int,
    batch_size: int,
    first_index: int = 0,
    **sampling,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images)`` for each batch of ``prompts``: image i is image ``first_index + i``
    of ``seed`` (``generate(prompts, seed=..., first_index=..., **sampling)``, a pipeline call),
    so the images do not depend on ``batch_size``."""
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        yield start, generate(chunk, seed=seed, first_index=first_index + start, **sampling)


def evaluate(
    generate: Callable[..., np.ndarray],
    combinations: Sequence[tuple[str, str, str]],
    samples_per_prompt: int,
    seed: int = 0,
    batch_size: int = 256,
    **sampling,
) -> dict:
    """Samples ``samples_per_prompt`` images for the canonical prompt of each combination (see
    ``generated_batches``) and reads their attributes back. Returns ``{"shape", "colour",
    "position", "all"}`` fractions (``all``: every attribute right), the count of images, the
    per-image read-back and the images themselves."""
    prompts, targets = prompts_and_targets(combinations, samples_per_prompt)
    pictures = np.concatenate(
        [images for _, images in generated_batches(generate, prompts, seed, batch_size, **sampling)]
    )  # [N, H, W, 3]
    read = read_attributes(pictures)  # [N, 3]
    return {**scores(read == targets), "read": read, "targets": targets, "images": pictures}


def scores(correct: np.ndarray) -> dict:
    """Fractions right per attribute and for all three at once, from a ``[N, 3]`` bool array."""
    result = {name: float(correct[:, i].mean()) for i, name in enumerate(ATTRIBUTES)}
    return {**result, "all": float(correct.all(axis=1).mean()), "count": len(correct)}
