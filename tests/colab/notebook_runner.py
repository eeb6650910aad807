"""Runs a notebook's code cells in order in one namespace, as one Colab kernel runs them, in the
working directory; then saves the arrays named on the command line, and the file jaxdiff was
imported from, into an .npz file.

    python notebook_runner.py NOTEBOOK.ipynb OUT.npz NAME...

torch and diffusers are made unimportable first: the notebooks' tiny runs need neither.
"""

import json
import sys
from pathlib import Path

import numpy as np

for _module in ("torch", "diffusers"):
    sys.modules[_module] = None  # `import torch` raises ImportError; find_spec gives None


def run(notebook: Path, out: Path, names: list[str]) -> None:
    """Executes the code cells of `notebook`; saves `names` from their namespace into `out`."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    namespace: dict = {"__name__": "__main__"}
    sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    for i, source in enumerate(sources):
        exec(compile(source, f"{notebook.name}[{i}]", "exec"), namespace)
    arrays = {name: np.asarray(namespace[name]) for name in names}
    np.savez(out, jaxdiff_file=np.asarray(sys.modules["jaxdiff"].__file__), **arrays)


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
