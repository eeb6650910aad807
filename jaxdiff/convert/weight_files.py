"""Finding and reading the weight files of a diffusers / transformers component folder.

diffusers names them ``diffusion_pytorch_model[.variant].safetensors`` and transformers
``model[.variant].safetensors``; large ones are sharded with a ``*.safetensors.index.json`` whose
``weight_map`` names the shard of each tensor. Legacy ``.bin`` files are read only through
``torch.load(..., weights_only=True)`` (never a plain unpickling) and only when torch is installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxdiff.convert.json_files import read_json_object
from jaxdiff.convert.safetensors_io import read_safetensors
from jaxdiff.errors import UserError, first_line

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
"""diffusers' and transformers' weight file names, in the order they are looked for."""


def with_variant(name: str, variant: str | None) -> str:
    """A weight file's name for a variant, as diffusers / transformers write it:
    model.fp16.safetensors, model.safetensors.index.fp16.json."""
    if not variant:
        return name
    stem, _, last = name.rpartition(".")
    return f"{stem}.{variant}.{last}"


def find_weights(directory: Path, variant: str | None = None) -> list[Path]:
    """The weight files of a component folder (a single file, or a shard index's shards).

    With a `variant` that the folder lacks, the default weights are read with a warning (as
    diffusers falls back).
    """
    for wanted in (variant, None) if variant else (None,):
        for name in WEIGHT_FILES:
            single = directory / with_variant(name, wanted)
            index = directory / with_variant(f"{name}.index.json", wanted)
            files = [single] if single.is_file() else _shards(index) if index.is_file() else []
            if files:
                if wanted != variant:
                    warnings.warn(
                        f"{directory} has no {variant} weights; reading {files[0].name}",
                        stacklevel=2,
                    )
                return files
    accepted = ", ".join(with_variant(name, variant) for name in WEIGHT_FILES)
    raise UserError(f"no weights in {directory}; accepted: {accepted} (or a shard index)")


def _shards(index: Path) -> list[Path]:
    """The shard files a `*.index.json` names, checked to exist."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(
            f"{index} has a weight_map of {type(weight_map).__name__}; accepted: "
            "an object mapping tensor names to shard files"
        )
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise UserError(f"{index} names shards that are missing: {', '.join(missing)}")
    return [index.parent / s for s in shards]


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state-dict pickle (`.bin`, `.pth`), read with
    `torch.load(weights_only=True)` (torch needed); bfloat16 stays bfloat16 (`ml_dtypes`)."""
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path} is a PyTorch pickle and torch is not installed; accepted: safetensors "
            "weights, or install torch to read it"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad or unsafe file
        raise UserError(
            f"{path} cannot be read safely by torch.load: {first_line(error)}"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}; accepted: a dict of tensors")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise UserError(
                f"{path} holds {name!r}: a {type(value).__name__}; accepted: a dict of tensors"
            )
    return {
        name: t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        if t.dtype == torch.bfloat16
        else t.numpy()
        for name, t in state.items()
    }


def read_weights(directory: Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a component folder by its reference name (a name in two shards is an
    error)."""
    tensors: dict[str, np.ndarray] = {}
    for path in find_weights(directory, variant):
        part = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_bin(path)
        repeated = sorted(set(part) & set(tensors))
        if repeated:
            raise UserError(f"{path} repeats tensors of another shard: {', '.join(repeated[:5])}")
        tensors.update(part)
    return tensors
