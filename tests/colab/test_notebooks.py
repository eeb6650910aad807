"""Every notebook in colab/ runs top to bottom in its tiny mode."""

import json
import os
import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))


def code_cells(path: Path) -> list[str]:
    """The code cells, without shell (`!`) and magic (`%`) lines, which only Colab runs."""
    cells = json.loads(path.read_text())["cells"]
    return [
        "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))
        for cell in cells
        if cell["cell_type"] == "code"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_tiny_mode(path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for i, source in enumerate(code_cells(path)):
        source = re.sub(r"'/tmp/jaxdiff_\w+'", repr(str(tmp_path)), source)
        exec(compile(source, f"{path.name}[{i}]", "exec"), namespace)  # noqa: S102
    assert namespace["TINY"] is True
    assert os.listdir(tmp_path)
