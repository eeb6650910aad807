"""jaxdiff's own format for a network: its architecture as JSON and its parameters as an orbax
checkpoint in jaxdiff's layout (NHWC kernels), the format the trainer restores from.

    DIR/jaxdiff_model.json   {"class": "UNet", "architecture": {...}, "param_dtype": "float32"}
    DIR/params/              orbax checkpoint of the parameters (pure dict)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.convert.components import build_model
from jaxdiff.convert.json_files import read_json_object
from jaxdiff.convert.output_folder import atomic_folder
from jaxdiff.errors import UserError, check_choice, first_line
from jaxdiff.models import AutoencoderKL, CLIPTextTransformer, ControlNet, UNet

CONFIG = "jaxdiff_model.json"
PARAM_DTYPES = ("float32", "float16", "bfloat16", "float64")
MODELS: dict[str, type[nnx.Module]] = {
    cls.__name__: cls for cls in (UNet, ControlNet, AutoencoderKL, CLIPTextTransformer)
}


def param_dtype_of(model: nnx.Module) -> np.dtype:
    """The dtype of a model's parameters (the first one's: jaxdiff models use one)."""
    return np.dtype(jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype)


def write(model: nnx.Module, directory: Path) -> None:
    """Writes `model` into the existing empty folder `directory`."""
    name = type(model).__name__
    if name not in MODELS:
        raise UserError(f"a {name} cannot be saved; accepted: {', '.join(MODELS)}")
    config = {
        "class": name,
        "architecture": dict(model.architecture),
        "param_dtype": param_dtype_of(model).name,
    }
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    with ocp.StandardCheckpointer() as checkpointer:
        params = nnx.state(model, nnx.Param).to_pure_dict()
        checkpointer.save(directory.absolute() / "params", params)


def save(model: nnx.Module, directory: str | Path) -> None:
    """Saves a UNet, ControlNet, AutoencoderKL or CLIPTextTransformer in jaxdiff's format to a
    new folder."""
    with atomic_folder(Path(directory)) as partial:
        write(model, partial)


def read_native_config(directory: Path) -> dict[str, Any]:
    """A jaxdiff network folder's config (`jaxdiff_model.json`), checked."""
    path = directory / CONFIG
    if not path.is_file():
        raise UserError(
            f"{directory} has no {CONFIG}; accepted: a folder written by jaxdiff convert"
        )
    config = read_json_object(path)
    if not isinstance(config.get("architecture"), dict):
        raise UserError(f"{path} has no architecture object; accepted: a file jaxdiff wrote")
    check_choice(f"{path}: param_dtype", config.get("param_dtype", "float32"), PARAM_DTYPES)
    check_choice(f"{path}: class", config.get("class"), MODELS)
    return config


def load(
    directory: str | Path,
    *,
    dtype: DTypeLike = np.float32,
    param_dtype: DTypeLike | None = None,
) -> nnx.Module:
    """The network saved in `directory`, parameters in `param_dtype` (default: as saved)."""
    directory = Path(directory)
    config = read_native_config(directory)
    model = build_model(
        MODELS[config["class"]],
        config["architecture"],
        str(directory),
        dtype,
        param_dtype or config.get("param_dtype", "float32"),
    )
    state = nnx.state(model, nnx.Param)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.to_pure_dict())
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory.absolute() / "params", abstract)
    except (ValueError, KeyError, FileNotFoundError) as error:
        raise UserError(
            f"{directory}/params does not fit {directory / CONFIG}: {first_line(error)}"
        ) from None
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model
