"""LoRA files as people share them -> adapters on the layers of jaxdiff's converted models.

The format is told from the keys:

- diffusers / peft: `unet.<module>.lora_A.weight` / `.lora_B.weight` (and `text_encoder.`,
  `text_encoder_2.`); alpha and rank from the `lora_adapter_metadata` JSON in the safetensors
  header when present (peft's `LoraConfig` fields per component: `lora_alpha`, `alpha_pattern`,
  `use_rslora`), else scale 1;
- the older diffusers format: `…attn1.processor.to_q_lora.down.weight` / `.up.weight`,
  `….lora.down.weight`, `…q_proj.lora_linear_layer.down.weight` (no component prefix: the
  UNet's attention processors); scale 1;
- kohya / A1111: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_te_` / `lora_te1_` (the text encoder), `lora_te2_` (the second text encoder); LoCon's
  3x3 and 1x1 convolutions included. Scale alpha / rank per module; no alpha key: scale 1.

A module path is the reference's (diffusers' UNet, transformers' CLIP), mapped to the jaxdiff
layer through the model's own name table (`name_tables`): the rule that reads the layer's
`weight` says where it lives and how it is laid out. Every key must be used, every tensor must
fit its layer and be finite; any failure is a one-line UserError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxdiff.convert.components import model_format
from jaxdiff.convert.name_tables import NameTable
from jaxdiff.convert.safetensors_io import read_metadata, read_safetensors
from jaxdiff.errors import UserError
from jaxdiff.models import lora

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""The file diffusers' `save_lora_weights` writes and `load_lora_weights` looks for in a folder."""

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_KOHYA_COMPONENTS = {
    "lora_unet": "unet",
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
}
_PEFT = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_OLD = re.compile(
    r"(?P<module>.+?)(?P<kind>_lora|\.lora|\.lora_layer|\.lora_linear_layer)\.(?P<part>down|up)"
    r"\.weight"
)
_KOHYA = re.compile(
    r"(?P<prefix>lora_unet|lora_te[12]?)_(?P<module>[^.]+)\.(?P<part>lora_down|lora_up|alpha)"
    r"(\.weight)?"
)
_PARTS = {"A": "down", "B": "up", "lora_down": "down", "lora_up": "up"}
# The older format's `<projection>_lora` names, per component.
_OLD_PROJECTIONS = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
_FORMATS = (("diffusers", _PEFT), ("kohya", _KOHYA), ("diffusers (old)", _OLD))


@dataclasses.dataclass(frozen=True)
class ModuleLoRA:
    """One adapter on one layer: the component ("unet", "text_encoder"), the layer's module
    path in the jaxdiff model, `down` `[in, r]` or `[kh, kw, in, r]`, `up` `[r, out]` (float32)
    and `scale` (alpha / rank)."""

    component: str
    path: str
    down: np.ndarray
    up: np.ndarray
    scale: float


@dataclasses.dataclass(frozen=True)
class _Target:
    """A model LoRAs are loaded into: its name table and its Linear / Conv layers by path."""

    table: NameTable
    layers: dict[str, lora.BaseLayer]

    @classmethod
    def of(cls, model: nnx.Module) -> _Target:
        return cls(model_format(model).table(dict(model.architecture)), lora.layer_paths(model))

    def kohya_names(self) -> dict[str, str]:
        """{kohya module name: reference module path} of every layer (kohya writes the
        reference path with `_` for `.`; the prefix, e.g. CLIP's `text_model.`, is optional)."""
        names = {}
        for path in self.layers:
            module, _ = self.table.layer_module(path)
            names[module.replace(".", "_")] = module
            names[module.removeprefix(self.table.prefix).replace(".", "_")] = module
        return names


@dataclasses.dataclass
class _Entry:
    """One module's tensors as the file has them (reference layout)."""

    keys: dict[str, str] = dataclasses.field(default_factory=dict)  # part -> key
    tensors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # part -> tensor


def lora_file(path_or_dir: str | Path, weight_name: str | None = None) -> Path:
    """The LoRA file: `path_or_dir` itself, or in a folder `weight_name`, else diffusers'
    `pytorch_lora_weights.safetensors`, else the folder's only `.safetensors` file."""
    path = Path(path_or_dir)
    if path.is_dir():
        if weight_name is not None or (path / WEIGHT_NAME).is_file():
            path = path / (weight_name or WEIGHT_NAME)
        else:
            found = sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise UserError(
                    f"{path}: {len(found)} .safetensors files and no {WEIGHT_NAME}; accepted: "
                    "a LoRA file, or a folder with one (or pass weight_name=)"
                )
            path = found[0]
    if not path.is_file():
        raise UserError(f"LoRA file {path} does not exist")
    return path


def read_lora(
    path_or_dir: str | Path, models: Mapping[str, nnx.Module], weight_name: str | None = None
) -> tuple[str, list[ModuleLoRA]]:
    """(format name, every adapter of the file, checked against `models`: {component: model})."""
    path = lora_file(path_or_dir, weight_name)
    tensors = read_safetensors(path)
    source = str(path)
    fmt, pattern = _detect(source, tensors)
    metadata = _adapter_metadata(path) if fmt == "diffusers" else {}
    targets = {component: _Target.of(model) for component, model in models.items()}
    entries = _group(fmt, pattern, tensors, targets)
    adapters = []
    for (component, module), entry in sorted(entries.items()):
        if component not in models:
            key = next(iter(entry.keys.values()))
            raise UserError(
                f"{source}: {key} targets the {component}, which this pipeline does not have; "
                f"accepted components: {', '.join(models)}"
            )
        scale_of = _scale_rule(fmt, metadata.get(component, {}), module)
        adapters.append(_adapter(source, component, module, entry, targets[component], scale_of))
    return fmt, adapters


def _detect(source: str, tensors: Mapping[str, np.ndarray]) -> tuple[str, re.Pattern]:
    """The format whose key pattern the file's keys follow; every key must follow it."""
    for name, pattern in _FORMATS:
        if any(pattern.fullmatch(key) for key in tensors):
            stray = sorted(key for key in tensors if not pattern.fullmatch(key))
            if stray:
                raise UserError(
                    f"{source}: {len(stray)} keys of no {name} LoRA layer: {', '.join(stray[:4])}"
                    " (DoRA, LoHa, LoKr and bias adapters are not supported)"
                )
            return name, pattern
    raise UserError(
        f"{source}: no known LoRA format in its keys ({', '.join(sorted(tensors)[:4]) or 'none'});"
        " accepted: diffusers/peft (….lora_A.weight), older diffusers (…_lora.down.weight, "
        "….lora_linear_layer.down.weight), kohya/A1111 (lora_unet_….lora_down.weight)"
    )


def _adapter_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """{component: its LoraConfig fields} from the header's `lora_adapter_metadata`."""
    raw = read_metadata(path).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        fields = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: unreadable lora_adapter_metadata: {error}") from None
    config: dict[str, dict[str, Any]] = {}
    for key, value in (fields if isinstance(fields, dict) else {}).items():
        component, _, field = key.partition(".")
        config.setdefault(component, {})[field] = value
    return config


def _group(
    fmt: str, pattern: re.Pattern, tensors: Mapping[str, np.ndarray], targets: dict[str, _Target]
) -> dict[tuple[str, str], _Entry]:
    """The file's tensors by (component, reference module path)."""
    prefixed = any(key.split(".", 1)[0] in COMPONENTS for key in tensors)
    kohya_names: dict[str, dict[str, str]] = {}
    entries: dict[tuple[str, str], _Entry] = {}
    for key in sorted(tensors):
        match = pattern.fullmatch(key)
        module, part = match["module"], _PARTS.get(match["part"], match["part"])
        if fmt == "kohya":
            component = _KOHYA_COMPONENTS[match["prefix"]]
            if component in targets and component not in kohya_names:
                kohya_names[component] = targets[component].kohya_names()
            module = kohya_names.get(component, {}).get(module, module.replace("_", "."))
        else:
            component, module = _split_component(module, prefixed)
            if fmt != "diffusers":
                module = _old_module(module, match["kind"], component)
        entry = entries.setdefault((component, module), _Entry())
        entry.keys[part] = key
        entry.tensors[part] = np.asarray(tensors[key])
    return entries


def _split_component(module: str, prefixed: bool) -> tuple[str, str]:
    """(component, module path in it); a file without component prefixes is the UNet's."""
    first, _, rest = module.partition(".")
    if prefixed:
        return first, rest
    return "unet", module


def _old_module(module: str, kind: str, component: str) -> str:
    """The module path an older diffusers key names: no `processor`, `to_q_lora` -> `to_q`."""
    module = re.sub(r"(^|\.)processor(?=\.|$)", "", module).lstrip(".")
    if kind == "_lora":
        parent, _, projection = module.rpartition(".")
        renamed = _OLD_PROJECTIONS.get(component, {}).get(projection, projection)
        module = f"{parent}.{renamed}" if parent else renamed
    return module


def _scale_rule(
    fmt: str, config: Mapping[str, Any], module: str
) -> Callable[[int, float | None], float]:
    """rank, alpha or None -> the module's scale: alpha / rank (peft's `use_rslora`: alpha /
    sqrt(rank)); alpha from the file's metadata for the diffusers format; no alpha: 1."""
    if fmt == "diffusers" and "lora_alpha" in config:
        alpha = config["lora_alpha"]
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        root = config.get("use_rslora", False)
        return lambda rank, _: alpha / (math.sqrt(rank) if root else rank)
    return lambda rank, alpha: 1.0 if alpha is None else alpha / rank


def _adapter(
    source: str,
    component: str,
    module: str,
    entry: _Entry,
    target: _Target,
    scale_of: Callable[[int, float | None], float],
) -> ModuleLoRA:
    """One module's adapter in jaxdiff's layout, every shape and value checked."""
    any_key = next(iter(entry.keys.values()))
    for part in ("down", "up"):
        if part not in entry.tensors:
            raise UserError(f"{source}: {any_key} has no matching {part} weight")
    mapped = target.table.to_module_path(f"{module}.weight")
    path = mapped[0].removesuffix(".kernel") if mapped else None
    if mapped is None or mapped[1].target != "kernel" or path not in target.layers:
        raise UserError(
            f"{source}: {any_key} targets no Linear or Conv layer of the {component} "
            f"(no module {module})"
        )
    layout = mapped[1].layout
    kernel_shape = tuple(target.layers[path].kernel.get_value().shape)
    for part, key in entry.keys.items():
        if not np.isfinite(entry.tensors[part]).all():
            raise UserError(f"{source}: {key} holds NaN or Inf values")
    down, up = entry.tensors["down"], entry.tensors["up"]
    rank = down.shape[0] if down.ndim else 0
    weight_shape = layout.reference_shape(kernel_shape)  # [out, in] or [out, in, kh, kw]
    wanted = {
        "down": (rank, *weight_shape[1:]),
        "up": (weight_shape[0], rank, *(1,) * (len(weight_shape) - 2)),
    }
    for part in ("down", "up"):
        if tuple(entry.tensors[part].shape) != wanted[part]:
            raise UserError(
                f"{source}: {entry.keys[part]} has shape {tuple(entry.tensors[part].shape)}; the "
                f"{component}'s {module} of weight shape {weight_shape} needs {wanted[part]}"
            )
    alpha = entry.tensors.get("alpha")
    if alpha is not None and alpha.size != 1:
        raise UserError(f"{source}: {entry.keys['alpha']} has shape {alpha.shape}; accepted: ()")
    down = layout.to_jax(down.astype(np.float32))  # [in, r] or [kh, kw, in, r]
    up = layout.to_jax(up.astype(np.float32)).reshape(rank, -1)  # [r, out]
    scale = scale_of(rank, None if alpha is None else float(alpha.reshape(())))
    return ModuleLoRA(component, path, down, up, float(scale))
