"""Prompt adherence of a text-to-image model on ``shapes``: sample every (shape, colour,
position) prompt and read the attributes back from the images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jaxdiff.data.shapes import COLOURS, POSITIONS, SHAPES, prompt
from jaxdiff.evaluation.adherence import read_attributes

ATTRIBUTES = ("shape", "colour", "position")


def evaluate(
    generate: Callable[..., np.ndarray],
    combinations: Sequence[tuple[str, str, str]],
    samples_per_prompt: int,
    seed: int = 0,
    batch_size: int = 256,
    **sampling,
) -> dict:
    """Samples ``samples_per_prompt`` images for the canonical prompt of each combination.

    ``generate(prompts, seed=..., **sampling) -> uint8 [N, H, W, 3]`` is a pipeline call. Returns
    ``{"shape", "colour", "position", "all"}`` fractions (``all``: every attribute right), the
    count of images, the per-image read-back and the images themselves.
    """
    targets = np.array(
        [
            (SHAPES.index(s), COLOURS.index(c), POSITIONS.index(p))
            for s, c, p in combinations
            for _ in range(samples_per_prompt)
        ],
        dtype=np.int32,
    )  # [N, 3]
    prompts = [prompt(s, c, p) for s, c, p in combinations for _ in range(samples_per_prompt)]
    pictures = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        # Each chunk gets its own seed so no two images share their starting noise.
        pictures.append(generate(chunk, seed=seed + start, **sampling))
    pictures = np.concatenate(pictures)  # [N, H, W, 3]
    read = read_attributes(pictures)  # [N, 3]
    return {**scores(read == targets), "read": read, "targets": targets, "images": pictures}


def scores(correct: np.ndarray) -> dict:
    """Fractions right per attribute and for all three at once, from a ``[N, 3]`` bool array."""
    result = {name: float(correct[:, i].mean()) for i, name in enumerate(ATTRIBUTES)}
    return {**result, "all": float(correct.all(axis=1).mean()), "count": len(correct)}
