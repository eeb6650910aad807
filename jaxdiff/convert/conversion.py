"""`jaxdiff convert`: a network folder or a whole model folder, diffusers <-> jaxdiff format.

A model folder's networks are converted one by one; its tokenizer, scheduler and model_index.json
are copied (components jaxdiff does not use, such as a safety checker, are left out and marked
absent in model_index.json, which diffusers accepts). Weights keep their dtype unless one is given.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from jax.typing import DTypeLike

from jaxdiff.convert import native
from jaxdiff.convert.components import write_component
from jaxdiff.convert.output_folder import atomic_folder
from jaxdiff.convert.pipeline_components import (
    load_network,
    model_networks,
    read_model_index,
    resolve_model_dir,
)
from jaxdiff.convert.weight_files import read_weights
from jaxdiff.errors import UserError, check_choice

TARGETS = ("jaxdiff", "diffusers")


def _is_component(entry: object) -> bool:
    """A model_index.json entry naming a component: [library, class]."""
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)


def stored_dtype(directory: Path, variant: str | None) -> np.dtype:
    """The dtype most of a network folder's floating-point weight bytes are stored in."""
    if (directory / native.CONFIG).is_file():
        return np.dtype(native.read_native_config(directory).get("param_dtype", "float32"))
    nbytes: dict[np.dtype, int] = {}
    for tensor in read_weights(directory, variant).values():
        if tensor.dtype.name in native.PARAM_DTYPES:
            nbytes[tensor.dtype] = nbytes.get(tensor.dtype, 0) + tensor.nbytes
    return max(nbytes, key=nbytes.get) if nbytes else np.dtype(np.float32)


def _write_network(
    source: Path, destination: Path, to: str, dtype: DTypeLike | None, variant: str | None
) -> None:
    """Converts one network folder into the existing empty folder `destination`."""
    param_dtype = np.dtype(dtype) if dtype else stored_dtype(source, variant)
    model = load_network(source, param_dtype=param_dtype, variant=variant)
    if to == "jaxdiff":
        native.write(model, destination)
    else:
        write_component(model, destination)


def convert(
    source: str | Path,
    destination: str | Path,
    to: str,
    *,
    dtype: DTypeLike | None = None,
    variant: str | None = None,
) -> list[str]:
    """Converts `source` (a network folder, a model folder or a hub id) into the new folder
    `destination` in format `to` ("jaxdiff" or "diffusers"); returns what was written.

    `dtype` is the dtype of the written weights (default: the source's); `variant` picks the
    source's weights variant ("fp16"). `destination` appears only when complete.
    """
    check_choice("to", to, TARGETS)
    local = Path(source)
    is_network = (local / "config.json").is_file() or (local / native.CONFIG).is_file()
    directory = local if is_network else resolve_model_dir(source, variant)
    if Path(destination).resolve().is_relative_to(directory.resolve()):
        raise UserError(f"{destination} is inside {directory}; accepted: a folder outside it")
    model_index = None if is_network else read_model_index(directory)
    with atomic_folder(Path(destination)) as partial:
        if model_index is None:
            _write_network(directory, partial, to, dtype, variant)
            return [f"{directory.name} -> {to}"]
        written = []
        networks, copied = model_networks(directory)
        for name in networks:
            (partial / name).mkdir()
            _write_network(directory / name, partial / name, to, dtype, variant)
            written.append(f"{name} -> {to}")
        for name in copied:
            shutil.copytree(directory / name, partial / name)
            written.append(f"{name} (copied)")
        kept = {*networks, *copied}
        index = {
            key: [None, None] if _is_component(value) and key not in kept else value
            for key, value in model_index.items()
        }
        (partial / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written
