"""A model's LoRA adapter -> a `.safetensors` file that diffusers, ComfyUI and A1111 load.

- "peft" (diffusers' `save_lora_weights` format): `unet.<module>.lora_A.weight` `[r, in]` (or
  `[r, in, kh, kw]`) and `.lora_B.weight` `[out, r]` (or `[out, r, 1, 1]`), and for each
  component a `LoraConfig` in the header's `lora_adapter_metadata` (`r` and `lora_alpha` the most
  common, `rank_pattern` / `alpha_pattern` the modules that differ, as diffusers writes them);
- "kohya" (A1111, ComfyUI): `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight` and
  `.alpha`; `lora_te_` for the text encoder, `lora_te2_` for a second one.

Module paths are the reference's (diffusers' UNet, transformers' CLIP), from the model's own name
table, CLIP's `text_model.` included (diffusers drops it when loading into transformers 5's
`CLIPTextModel`, which has no such level); the `LoraConfig`'s module names leave it out, as peft
matches them by their end either way. An adapter's alpha is its scale times its rank.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from jaxdiff.convert.components import model_format
from jaxdiff.convert.name_tables import Layout
from jaxdiff.convert.safetensors_io import write_safetensors
from jaxdiff.errors import UserError, check_choice
from jaxdiff.models import lora

SAVE_FORMATS = ("peft", "kohya")
_KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def _module_adapters(
    model: nnx.Module, adapter: str
) -> tuple[str, list[tuple[str, np.ndarray, np.ndarray, float]]]:
    """(the name table's prefix, [(reference module path, down, up in the reference layout,
    alpha)] of every layer of `model` that holds adapter `adapter`)."""
    table = model_format(model).table(dict(model.architecture))
    found = []
    for path, layer in lora.adapted_layers(model):
        if adapter not in layer.adapters:
            continue
        module, rule = table.layer_module(path)
        lora_ = layer.adapters[adapter]
        down = np.asarray(lora_.down.get_value(), np.float32)  # [in, r] or [kh, kw, in, r]
        up = np.asarray(lora_.up.get_value(), np.float32)  # [r, out]
        rank = down.shape[-1]
        if rule.layout is Layout.CONV:
            up = up.reshape(1, 1, *up.shape)  # a 1x1 convolution
        # alpha to float32's precision: alpha 3 at rank 7 is written as 3, not 2.9999998
        alpha = float(f"{float(lora_.scale.get_value()) * rank:.7g}")
        found.append((module, rule.layout.to_reference(down), rule.layout.to_reference(up), alpha))
    return table.prefix, found


def lora_state_dict(
    models: Mapping[str, nnx.Module], adapter: str = "default", save_format: str = "peft"
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, header metadata) of adapter `adapter` on `models` ({component: model}, e.g.
    "unet", "text_encoder") in `save_format`."""
    check_choice("save_format", save_format, SAVE_FORMATS)
    tensors: dict[str, np.ndarray] = {}
    configs: dict[str, object] = {}
    for component, model in models.items():
        prefix, adapters = _module_adapters(model, adapter)
        if not adapters:
            continue
        if save_format == "kohya":
            kohya = _KOHYA_PREFIXES[component]
            for module, down, up, alpha in adapters:
                name = f"{kohya}_{module.replace('.', '_')}"
                tensors[f"{name}.lora_down.weight"] = down
                tensors[f"{name}.lora_up.weight"] = up
                tensors[f"{name}.alpha"] = np.asarray(alpha, np.float32)
            continue
        for module, down, up, _ in adapters:
            tensors[f"{component}.{module}.lora_A.weight"] = down
            tensors[f"{component}.{module}.lora_B.weight"] = up
        for field, value in _lora_config(prefix, adapters).items():
            configs[f"{component}.{field}"] = value
    if not tensors:
        held = sorted({name for model in models.values() for name in lora.adapter_names(model)})
        raise UserError(
            f"no layer holds a LoRA adapter named {adapter!r}; adapters held: "
            f"{', '.join(held) or 'none'}"
        )
    metadata = {"format": "pt"}  # as diffusers' writer
    if configs:
        metadata["lora_adapter_metadata"] = json.dumps(configs, sort_keys=True)
    return tensors, metadata


def _lora_config(
    prefix: str, adapters: list[tuple[str, np.ndarray, np.ndarray, float]]
) -> dict[str, object]:
    """peft `LoraConfig` fields for one component's adapters; module names without `prefix`,
    which peft matches by their end whether or not the model has the prefix's level."""
    ranks = {module.removeprefix(prefix): down.shape[0] for module, down, _, _ in adapters}
    alphas = {module.removeprefix(prefix): alpha for module, _, _, alpha in adapters}
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {m: r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {m: a for m, a in alphas.items() if a != alpha},
        "target_modules": sorted(ranks),
        "use_dora": False,
        "lora_bias": False,
    }


def save_lora(
    path: str | Path,
    models: Mapping[str, nnx.Module],
    adapter: str = "default",
    save_format: str = "peft",
) -> Path:
    """Writes adapter `adapter` of `models` to the `.safetensors` file `path`, its folder made if
    needed (under a temporary name, then renamed: never a partial file)."""
    tensors, metadata = lora_state_dict(models, adapter, save_format)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, tensors, metadata)
    return Path(path)
