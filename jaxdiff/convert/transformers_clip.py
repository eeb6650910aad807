"""transformers' `CLIPTextModel` / `CLIPTextModelWithProjection` and
`CLIPVisionModelWithProjection` (Radford et al. 2021): config options and name tables.

Verified against transformers 5 (the tests compare `defaults` with `CLIPTextConfig()` and every
converted encoder's outputs with transformers' own).
"""

from __future__ import annotations

from typing import Any

from jaxdiff.convert.name_tables import Layout, NameTable, Rule
from jaxdiff.convert.reference_config import ReferenceConfig
from jaxdiff.errors import UserError

TRANSFORMERS_VERSION = "5.23.0"
"""The transformers version whose format the table was verified against (written to configs)."""

CLIP_TABLE = NameTable(
    rules=(
        Rule(r"embeddings\.(token|position)_embedding", "weight", "embedding"),
        Rule(
            r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])|text_projection",
            "weight",
            "kernel",
            Layout.LINEAR,
        ),
        Rule(r"encoder\.layers\.\d+\.layer_norm[12]|final_layer_norm", "weight", "scale"),
        Rule(r".+", "bias", "bias"),
    ),
    prefix="text_model.",
    unprefixed=r"text_projection",
    ignored=r"(text_model\.)?embeddings\.position_ids",
)

_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
_ARGUMENTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "eos_token_id",
)
# Initialisation scales and the ids the tokenizer owns say nothing about the forward pass.
_IGNORED = ("initializer_range", "initializer_factor", "pad_token_id", "bos_token_id", "dropout")

CLIP_CONFIG = ReferenceConfig(
    "CLIPTextModel",
    {**_DEFAULTS, "projection_dim": None},
    _ARGUMENTS,
    ignored=(*_IGNORED, "projection_dim"),
    strict=False,
)
CLIP_PROJECTION_CONFIG = ReferenceConfig(
    "CLIPTextModelWithProjection",
    _DEFAULTS,
    (*_ARGUMENTS, "projection_dim"),
    ignored=_IGNORED,
    strict=False,
)


def clip_table(arguments: dict[str, Any]) -> NameTable:
    """The text encoder's table (the same for every architecture)."""
    del arguments
    return CLIP_TABLE


def clip_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`CLIPTextTransformer` arguments of a transformers `CLIPTextModel` config."""
    return CLIP_CONFIG.to_arguments(config, source)


def clip_projection_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`CLIPTextTransformer` arguments of a `CLIPTextModelWithProjection` config."""
    return CLIP_PROJECTION_CONFIG.to_arguments(config, source)


def clip_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A transformers `CLIPTextConfig` for the encoder's arguments (with or without projection)."""
    reference = CLIP_CONFIG if arguments.get("projection_dim") is None else CLIP_PROJECTION_CONFIG
    config = {**_DEFAULTS, **reference.to_config(arguments)}
    if arguments.get("projection_dim") is None:
        del config["projection_dim"]
    return {
        "architectures": [reference.class_name],
        "model_type": "clip_text_model",
        "transformers_version": TRANSFORMERS_VERSION,
        **config,
    }


# The image tower: transformers' `CLIPVisionModelWithProjection` (and the `vision_model.*` /
# `visual_projection` part of a `CLIPModel`).

CLIP_VISION_TABLE = NameTable(
    rules=(
        Rule(r"embeddings", "class_embedding", "class_embedding"),
        Rule(r"embeddings\.patch_embedding", "weight", "kernel", Layout.CONV),
        Rule(r"embeddings\.position_embedding", "weight", "embedding"),
        Rule(
            r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])|visual_projection",
            "weight",
            "kernel",
            Layout.LINEAR,
        ),
        Rule(
            r"encoder\.layers\.\d+\.layer_norm[12]|pre_layrnorm|post_layernorm", "weight", "scale"
        ),
        Rule(r".+", "bias", "bias"),
    ),
    prefix="vision_model.",
    unprefixed=r"visual_projection",
    ignored=r"(vision_model\.)?embeddings\.position_ids",
)

_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

CLIP_VISION_CONFIG = ReferenceConfig(
    "CLIPVisionModelWithProjection",
    _VISION_DEFAULTS,
    (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "projection_dim",
        "num_channels",
        "hidden_act",
        "layer_norm_eps",
    ),
    ignored=("initializer_range", "initializer_factor", "dropout"),
    strict=False,
)


def clip_vision_table(arguments: dict[str, Any]) -> NameTable:
    """The image encoder's table."""
    del arguments
    return CLIP_VISION_TABLE


def clip_vision_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`CLIPVisionTransformer` arguments of a `CLIPVisionModelWithProjection` config."""
    return CLIP_VISION_CONFIG.to_arguments(config, source)


def clip_vision_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A transformers `CLIPVisionConfig` for a `CLIPVisionTransformer`'s arguments."""
    return {
        "architectures": [CLIP_VISION_CONFIG.class_name],
        "model_type": "clip_vision_model",
        "transformers_version": TRANSFORMERS_VERSION,
        **CLIP_VISION_CONFIG.to_config(arguments),
    }


def clip_model_arguments(
    config: dict[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`CLIPTextTransformer`, `CLIPVisionTransformer`) arguments of a transformers `CLIPModel`
    config: its `text_config` and `vision_config`, both projected to the top-level
    `projection_dim` (the width `CLIPModel`'s own `text_projection` / `visual_projection` use)."""
    projection_dim = config.get("projection_dim", 512)
    towers = []
    for key, reference in (
        ("text_config", CLIP_PROJECTION_CONFIG),
        ("vision_config", CLIP_VISION_CONFIG),
    ):
        tower = config.get(key, {})
        if not isinstance(tower, dict):
            raise UserError(f"{source}: {key} is {tower!r}; accepted: a JSON object")
        tower = {**tower, "projection_dim": projection_dim}
        towers.append(reference.to_arguments(tower, f"{source} {key}"))
    return towers[0], towers[1]
