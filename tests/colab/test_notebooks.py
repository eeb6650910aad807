"""Every notebook in colab/ runs top to bottom in its tiny mode and makes real images."""

import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))

# What each notebook makes in its tiny mode: image arrays it leaves in its namespace and PNG files
# it writes into its output folder, each with its shape ([N, H, W, 3] for a batch, [H, W, C] for
# one image; None: a matplotlib figure, RGB or RGBA of any size).
MADE = {
    "compare_samplers.ipynb": {"error_vs_nfe.png": None},
    "quickstart.ipynb": {
        "pictures": (4, 16, 16, 3),  # 2 prompts x 2 images, 8x8 latents, VAE factor 2
        "grid.png": (38, 38, 3),  # 2 x 2 with 2-pixel padding
        "samplers.png": None,
        "img2img.png": (16, 16, 3),
    },
    "shapes_quickstart.ipynb": {
        "pictures": (3, 16, 16, 3),  # 3 prompts, the tiny pixel-space model's 16x16 images
        "grid": (20, 56, 3),  # 1 x 3 with 2-pixel padding
    },
}


def code_cells(path: Path) -> list[str]:
    """The code cells, without shell (`!`) and magic (`%`) lines, which only Colab runs."""
    cells = json.loads(path.read_text())["cells"]
    return [
        "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))
        for cell in cells
        if cell["cell_type"] == "code"
    ]


def check_images(name: str, value: object, shape: tuple[int, ...] | None) -> None:
    """`value` (an array, uint8 or float in [0, 1]) has `shape` and is finite, and each image in
    it varies by more than one 8-bit level."""
    array = np.asarray(value)
    scaled = array / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
    if shape is None:
        assert array.ndim == 3 and array.shape[-1] in (3, 4), f"{name}: shape {array.shape}"
    else:
        assert array.shape == shape, f"{name}: shape {array.shape}, expected {shape}"
    assert np.isfinite(scaled).all(), f"{name}: not finite"
    batch = scaled.reshape(-1, *scaled.shape[-3:])  # [N, H, W, C]
    spread = batch.reshape(batch.shape[0], -1).std(axis=1)  # [N]
    assert spread.min() > 1 / 255, f"{name}: an image is constant (std {spread.min():.2g})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_tiny_mode(path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for i, source in enumerate(code_cells(path)):
        source = re.sub(r"'/tmp/jaxdiff_\w+'", repr(str(tmp_path)), source)
        exec(compile(source, f"{path.name}[{i}]", "exec"), namespace)
    assert namespace["TINY"] is True
    assert path.name in MADE, f"say in MADE what {path.name} makes"
    for name, shape in MADE[path.name].items():
        if name.endswith(".png"):
            file = tmp_path / name
            assert file.is_file(), f"{path.name} wrote no {name}"
            with Image.open(file) as picture:
                check_images(name, picture, shape)
        else:
            check_images(name, namespace[name], shape)
