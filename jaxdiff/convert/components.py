"""diffusers / transformers component folders <-> jaxdiff NNX modules.

A component folder holds `config.json` and its weights (`diffusion_pytorch_model.safetensors`
for diffusers, `model.safetensors` for transformers). `from_diffusers` builds the jaxdiff module
the config describes and fills every parameter from the weights through the model's name table;
`to_diffusers` writes a module back as a folder the reference library loads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.convert import diffusers, transformers_clip
from jaxdiff.convert.json_files import read_json_object
from jaxdiff.convert.name_tables import NameTable, load_into, state_dict
from jaxdiff.convert.output_folder import atomic_folder
from jaxdiff.convert.safetensors_io import write_safetensors
from jaxdiff.convert.weight_files import read_weights
from jaxdiff.errors import UserError, first_line
from jaxdiff.models import (
    AutoencoderKL,
    CLIPTextTransformer,
    CLIPVisionTransformer,
    ControlNet,
    DiT,
    MMDiT,
    UNet,
)
from jaxdiff.models.abstract import eval_shape


@dataclasses.dataclass(frozen=True)
class ComponentFormat:
    """How one reference class is stored and which jaxdiff module it becomes."""

    reference_class: str
    model: type[nnx.Module]
    weights_name: str
    arguments: Callable[[dict[str, Any], str], dict[str, Any]]  # config, source -> arguments
    config: Callable[[dict[str, Any]], dict[str, Any]]  # arguments -> complete config
    table: Callable[[dict[str, Any]], NameTable]  # arguments -> name table


ConfigBuilder = Callable[[dict[str, Any]], dict[str, Any]]


def _diffusers_config(class_name: str, build: ConfigBuilder) -> ConfigBuilder:
    """`build` with diffusers' class name and format version added."""

    def config(arguments: dict[str, Any]) -> dict[str, Any]:
        return {
            "_class_name": class_name,
            "_diffusers_version": diffusers.DIFFUSERS_VERSION,
            **build(arguments),
        }

    return config


_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_TRANSFORMERS_WEIGHTS = "model.safetensors"

FORMATS: dict[str, ComponentFormat] = {
    f.reference_class: f
    for f in (
        ComponentFormat(
            "UNet2DConditionModel",
            UNet,
            _DIFFUSERS_WEIGHTS,
            diffusers.unet_arguments,
            _diffusers_config("UNet2DConditionModel", diffusers.unet_config),
            diffusers.unet_table,
        ),
        ComponentFormat(
            "ControlNetModel",
            ControlNet,
            _DIFFUSERS_WEIGHTS,
            diffusers.controlnet_arguments,
            _diffusers_config("ControlNetModel", diffusers.controlnet_config),
            diffusers.unet_table,
        ),
        ComponentFormat(
            "DiTTransformer2DModel",
            DiT,
            _DIFFUSERS_WEIGHTS,
            diffusers.dit_arguments,
            _diffusers_config("DiTTransformer2DModel", diffusers.dit_config),
            diffusers.dit_table,
        ),
        ComponentFormat(  # written back as a DiTTransformer2DModel (model_format)
            "Transformer2DModel",
            DiT,
            _DIFFUSERS_WEIGHTS,
            diffusers.legacy_dit_arguments,
            _diffusers_config("DiTTransformer2DModel", diffusers.dit_config),
            diffusers.dit_table,
        ),
        ComponentFormat(
            "SD3Transformer2DModel",
            MMDiT,
            _DIFFUSERS_WEIGHTS,
            diffusers.mmdit_arguments,
            _diffusers_config("SD3Transformer2DModel", diffusers.mmdit_config),
            diffusers.mmdit_table,
        ),
        ComponentFormat(
            "AutoencoderKL",
            AutoencoderKL,
            _DIFFUSERS_WEIGHTS,
            diffusers.vae_arguments,
            _diffusers_config("AutoencoderKL", diffusers.vae_config),
            diffusers.vae_table,
        ),
        ComponentFormat(
            "CLIPTextModel",
            CLIPTextTransformer,
            _TRANSFORMERS_WEIGHTS,
            transformers_clip.clip_arguments,
            transformers_clip.clip_config,
            transformers_clip.clip_table,
        ),
        ComponentFormat(
            "CLIPTextModelWithProjection",
            CLIPTextTransformer,
            _TRANSFORMERS_WEIGHTS,
            transformers_clip.clip_projection_arguments,
            transformers_clip.clip_config,
            transformers_clip.clip_table,
        ),
        ComponentFormat(
            "CLIPVisionModelWithProjection",
            CLIPVisionTransformer,
            _TRANSFORMERS_WEIGHTS,
            transformers_clip.clip_vision_arguments,
            transformers_clip.clip_vision_config,
            transformers_clip.clip_vision_table,
        ),
    )
}
"""Supported reference classes, by diffusers' `_class_name` / transformers' `architectures[0]`."""


def read_component_config(directory: Path) -> dict[str, Any]:
    """A component folder's config.json, with a one-line error for anything else."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a folder; accepted: a diffusers component folder")
    path = directory / "config.json"
    if not path.is_file():
        hint = (
            " (a model folder: load it with load_pipeline_components)"
            if (directory / "model_index.json").is_file()
            else ""
        )
        raise UserError(
            f"{directory} has no config.json{hint}; accepted: a diffusers or transformers "
            "component folder (config.json + weights)"
        )
    return read_json_object(path)


def component_format(config: dict[str, Any], source: str) -> ComponentFormat:
    """The format of a component from its config's class name."""
    architectures = config.get("architectures")
    name = config.get("_class_name") or (
        architectures[0] if isinstance(architectures, list) and architectures else None
    )
    if not isinstance(name, str | None):
        raise UserError(
            f"{source} names the class {name!r} (_class_name or architectures[0]), not a "
            f"string; accepted: {', '.join(FORMATS)}"
        )
    if name not in FORMATS:
        raise UserError(
            f"{source} is a {name!r} component; accepted: {', '.join(FORMATS)}"
            if name
            else f"{source} names no model class (_class_name or architectures); accepted: "
            f"{', '.join(FORMATS)}"
        )
    return FORMATS[name]


def from_diffusers(
    component_dir: str | Path,
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    variant: str | None = None,
) -> nnx.Module:
    """The NNX module of a diffusers or transformers component folder, weights loaded.

    Args:
      component_dir: a folder with `config.json` and safetensors (or `.bin`) weights, e.g.
        `stable-diffusion-v1-5/unet`: a `UNet2DConditionModel` becomes a `UNet`, a
        `ControlNetModel` a `ControlNet`, a `DiTTransformer2DModel` (or the
        `Transformer2DModel` with adaLN-Zero of the first DiT checkpoints) a `DiT`, an
        `SD3Transformer2DModel` an `MMDiT`, an
        `AutoencoderKL` an `AutoencoderKL`, a `CLIPTextModel[WithProjection]` a
        `CLIPTextTransformer`.
      dtype, param_dtype: compute and parameter dtypes (weights are cast to `param_dtype`).
      variant: the weights variant to read (`"fp16"`: `*.fp16.safetensors`).
    """
    directory = Path(component_dir)
    model = abstract_model(read_component_config(directory), str(directory), dtype, param_dtype)
    table = model_format(model).table(dict(model.architecture))
    load_into(table, read_weights(directory, variant), model, str(directory))
    return model


def abstract_model(
    config: dict[str, Any],
    source: str,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
) -> nnx.Module:
    """The jaxdiff module a reference config describes, built abstractly (`nnx.eval_shape`: no
    memory, no initialisers run); `source` names the config in error messages."""
    fmt = component_format(config, source)
    return build_model(fmt.model, fmt.arguments(config, source), source, dtype, param_dtype)


def build_model(
    cls: type[nnx.Module],
    arguments: dict[str, Any],
    source: str,
    dtype: DTypeLike,
    param_dtype: DTypeLike,
) -> nnx.Module:
    """`cls(**arguments)` built abstractly; an argument it refuses or cannot take is a one-line
    error naming `source`. The same architecture built again is a copy of the first: tracing a
    module's initialisers takes seconds, copying its abstract state milliseconds."""
    # repr, not JSON: a list and a tuple of the same values are different arguments
    key = (cls, repr(sorted(arguments.items())), jnp.dtype(dtype).name, jnp.dtype(param_dtype).name)
    if key not in _ABSTRACT_MODELS:
        try:
            model = eval_shape(
                lambda: cls(**arguments, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
            )
        except UserError as error:
            raise UserError(f"{source}: {error}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as error:
            raise UserError(f"{source}: unsupported architecture: {first_line(error)}") from None
        _ABSTRACT_MODELS[key] = nnx.split(model)
    return nnx.merge(*_ABSTRACT_MODELS[key], copy=True)


# (class, arguments, dtype, param_dtype) -> the module built abstractly, split
_ABSTRACT_MODELS: dict[tuple, tuple[nnx.GraphDef, nnx.State]] = {}


def model_format(model: nnx.Module) -> ComponentFormat:
    """The reference format a jaxdiff module is written in."""
    if isinstance(model, CLIPTextTransformer):
        with_projection = dict(model.architecture)["projection_dim"] is not None
        return FORMATS["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"]
    for fmt in FORMATS.values():
        if isinstance(model, fmt.model):
            return fmt
    raise UserError(
        f"a {type(model).__name__} has no diffusers format; accepted: UNet, ControlNet, DiT, "
        "MMDiT, AutoencoderKL, CLIPTextTransformer, CLIPVisionTransformer"
    )


def write_component(model: nnx.Module, directory: Path, dtype: DTypeLike | None = None) -> None:
    """Writes `model` as a reference component into the existing folder `directory`."""
    fmt = model_format(model)
    config = fmt.config(dict(model.architecture))
    tensors = state_dict(fmt.table(dict(model.architecture)), model)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors(
        directory / fmt.weights_name, tensors, {"format": "pt"}, np.dtype(dtype) if dtype else None
    )


def to_diffusers(
    model: nnx.Module, directory: str | Path, *, dtype: DTypeLike | None = None
) -> None:
    """Writes `model` as a diffusers / transformers component folder (config.json + safetensors)
    that `from_pretrained` of the reference class loads; tensors in `dtype` (default: the
    parameters' own). The folder must be new or empty; it appears only when complete."""
    with atomic_folder(Path(directory)) as partial:
        write_component(model, partial, dtype)
