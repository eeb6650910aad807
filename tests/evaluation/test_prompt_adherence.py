"""Prompt adherence: sampling every prompt and scoring what is read back."""

import numpy as np

from jaxdiff.data.shapes import COLOURS, POSITIONS, SHAPES, ShapesDataset, combinations
from jaxdiff.evaluation import prompt_adherence
from jaxdiff.evaluation.shape_attributes import read_attributes


def drawing_generator(swap_squares_for_circles: bool = False):
    """A stand-in pipeline that draws exactly what each canonical prompt asks for."""
    data = ShapesDataset(image_size=32)
    attributes = data.attributes(np.arange(20_000))
    calls = []

    def generate(prompts, seed, first_index):
        calls.append((seed, first_index))
        pictures = []
        for text in prompts:
            words = text.split()
            shape, colour = SHAPES.index(words[2]), COLOURS.index(words[1])
            position = next(i for i, p in enumerate(POSITIONS) if p in text)
            if swap_squares_for_circles and shape == SHAPES.index("square"):
                shape = SHAPES.index("circle")
            match = np.flatnonzero((attributes == (shape, colour, position)).all(axis=1))[0]
            pictures.append(data.images(np.array([match]))[0])
        return np.stack(pictures)

    return generate, calls


def test_a_perfect_generator_scores_one():
    generate, calls = drawing_generator()
    result = prompt_adherence.evaluate(generate, combinations(), 2, seed=5, batch_size=64)
    assert result["count"] == 180 and result["images"].shape == (180, 32, 32, 3)
    assert result["all"] == 1.0 and result["shape"] == 1.0
    assert calls == [(5, 0), (5, 64), (5, 128)], "chunks are numbered by their first image"


def test_scores_count_each_attribute():
    generate, _ = drawing_generator(swap_squares_for_circles=True)
    result = prompt_adherence.evaluate(generate, combinations(), 1)
    assert result["colour"] == 1.0 and result["position"] == 1.0
    assert np.isclose(result["shape"], 2 / 3) and np.isclose(result["all"], 2 / 3)


def test_scores_of_the_attributes_read_back():
    batch = ShapesDataset(image_size=32, seed=13).batch(np.arange(100))
    targets = batch["attributes"].copy()
    perfect = {"shape": 1.0, "colour": 1.0, "position": 1.0, "all": 1.0, "count": 100}
    assert prompt_adherence.scores(read_attributes(batch["image"]) == targets) == perfect
    targets[:25, 1] = (targets[:25, 1] + 1) % len(COLOURS)
    targets[20:30, 2] = (targets[20:30, 2] + 1) % len(POSITIONS)
    result = prompt_adherence.scores(read_attributes(batch["image"]) == targets)
    assert result == {"shape": 1.0, "colour": 0.75, "position": 0.9, "all": 0.7, "count": 100}
