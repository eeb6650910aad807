"""Every notebook in colab/ runs as Colab runs it, in its tiny mode, and makes real images.

Each notebook runs in a process of its own from an empty working directory (Colab's /content),
its install cell included: `JAXDIFF_URL` points it at a copy of this checkout, and pip's own
environment variables make that install put jaxdiff alone into a folder of the test's, offline.
The rest of the notebook then imports that installed jaxdiff, configs included.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
RUNNER = Path(__file__).with_name("notebook_runner.py")
BUILT_FROM = ("setup.py", "pyproject.toml", "README.md", "jaxdiff", "configs")

# What each notebook makes in its tiny mode: image arrays it leaves in its namespace and PNG files
# it writes under the working directory, each with its shape ([N, H, W, 3] for a batch, [H, W, C]
# for one image; None: a matplotlib figure, RGB or RGBA of any size).
MADE = {
    "compare_samplers.ipynb": {"compare_samplers/error_vs_nfe.png": None},
    "quickstart.ipynb": {
        "pictures": (4, 16, 16, 3),  # 2 prompts x 2 images, 8x8 latents, VAE factor 2
        "sd_quickstart/grid.png": (38, 38, 3),  # 2 x 2 with 2-pixel padding
        "sd_quickstart/samplers.png": None,
        "sd_quickstart/img2img.png": (16, 16, 3),
    },
    "shapes_quickstart.ipynb": {
        "pictures": (3, 16, 16, 3),  # 3 prompts, the tiny 16x16 images
        "grid": (20, 56, 3),  # 1 x 3 with 2-pixel padding
    },
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The files jaxdiff is built from, copied: pip builds a local folder in place, and builds of
    the checkout itself by parallel test runs would race over its build/ folder."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in BUILT_FROM:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy


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
def test_notebook_runs_as_in_colab(path, checkout, tmp_path):
    assert path.name in MADE, f"say in MADE what {path.name} makes"
    content, site = tmp_path / "content", tmp_path / "site"
    content.mkdir()
    site.mkdir()
    environment = {
        **os.environ,
        "JAXDIFF_URL": str(checkout),
        "JAXDIFF_NOTEBOOK_TINY": "1",
        "PYTHONPATH": str(site),
        "MPLBACKEND": "Agg",
        # the install cell's pip: jaxdiff alone (its requirements are this environment's), into
        # `site`, built with this environment's setuptools, without the network
        "PIP_TARGET": str(site),
        "PIP_NO_DEPS": "1",
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip reads this variable inverted: 0 builds in place
    }
    arrays = [name for name in MADE[path.name] if "/" not in name]
    out = tmp_path / "arrays.npz"
    command = [sys.executable, str(RUNNER), str(path), str(out), *arrays]
    run = subprocess.run(command, cwd=content, env=environment, capture_output=True, text=True)
    assert run.returncode == 0, f"{path.name} failed:\n{run.stdout[-2000:]}\n{run.stderr[-6000:]}"
    assert "installed jaxdiff from file://" in run.stdout
    with np.load(out) as made:
        assert Path(str(made["jaxdiff_file"])).is_relative_to(site), "not the installed jaxdiff"
        for name in arrays:
            check_images(name, made[name], MADE[path.name][name])
    for name, shape in MADE[path.name].items():
        if "/" in name:
            file = content / name
            assert file.is_file(), f"{path.name} wrote no {name}"
            with Image.open(file) as picture:
                check_images(name, picture, shape)


def test_notebooks_open_alike():
    """Each notebook: an Open in Colab badge first, the same install cell as its first code cell
    (the URL in one variable on its first line), no outputs, a note before every code cell."""
    install_cells = set()
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        assert f"colab/{path.name})" in "".join(cells[0]["source"]), f"{path.name}: no badge"
        code = [i for i, cell in enumerate(cells) if cell["cell_type"] == "code"]
        install_cells.add("".join(cells[code[0]]["source"]))
        for i in code:
            assert cells[i]["outputs"] == [], f"{path.name}: cell {i} has outputs"
            assert cells[i - 1]["cell_type"] == "markdown", f"{path.name}: no note before cell {i}"
    (install,) = install_cells
    assert install.startswith("JAXDIFF_URL = 'https://")
