"""A whole Stable Diffusion model folder (diffusers' `model_index.json` layout) or hub id.

    model_index.json   unet/  vae/  text_encoder/  tokenizer/  scheduler/
                       text_encoder_2/  tokenizer_2/      (SDXL; its refiner has these only)
                       low_res_scheduler/                 (the x4 upscaler)

Each network folder is read by `from_diffusers`, or by `jaxdiff.convert.native` when it was
converted with `jaxdiff convert --to jaxdiff`; the tokenizer by transformers; the scheduler config
is returned as a dict for the sampling pipelines.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.convert import native
from jaxdiff.convert.components import from_diffusers
from jaxdiff.convert.json_files import read_json_object
from jaxdiff.convert.weight_files import WEIGHT_FILES, with_variant
from jaxdiff.errors import UserError, first_line

NETWORKS = ("unet", "vae", "text_encoder")
COMPONENTS = (*NETWORKS, "tokenizer", "scheduler")
# Text encoders and their tokenizers: Stable Diffusion's, SDXL's second (OpenCLIP bigG).
TEXT_PAIRS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclasses.dataclass
class PipelineComponents:
    """The parts of a text-to-image model; `scheduler_config` is scheduler/scheduler_config.json
    (`low_res_scheduler_config` the x4 upscaler's low_res_scheduler/scheduler_config.json)."""

    unet: nnx.Module
    vae: nnx.Module
    text_encoder: nnx.Module | None  # None for SDXL's refiner
    tokenizer: Any
    scheduler_config: dict[str, Any]
    model_index: dict[str, Any]
    text_encoder_2: nnx.Module | None = None  # SDXL's
    tokenizer_2: Any = None
    low_res_scheduler_config: dict[str, Any] | None = None


def network_patterns(folder: str, variant: str | None) -> list[str]:
    """The files of one network in `folder` of a hub model ("": at its top): its config and its
    safetensors of one variant (no other variant, no .bin or .ckpt duplicates)."""
    prefix = f"{folder}/" if folder else ""
    patterns = [f"{prefix}config.json", f"{prefix}{native.CONFIG}", f"{prefix}params/**"]
    for name in WEIGHT_FILES:
        if name.endswith(".safetensors"):
            stem = with_variant(name, variant).removesuffix(".safetensors")
            patterns += [
                f"{prefix}{stem}.safetensors",
                f"{prefix}{with_variant(name + '.index.json', variant)}",
                f"{prefix}{stem}-*-of-*.safetensors",
            ]
    return patterns


def hub_patterns(variant: str | None) -> list[str]:
    """The files of a hub model the components need: the networks' (`network_patterns`), the
    tokenizer and the scheduler."""
    patterns = ["model_index.json", "scheduler/*", "low_res_scheduler/*", "tokenizer/*"]
    patterns += ["tokenizer_2/*"]
    for network in (*NETWORKS, "text_encoder_2"):
        patterns += network_patterns(network, variant)
    return patterns


def resolve_model_dir(
    model_dir_or_hub_id: str | Path,
    variant: str | None = None,
    patterns: list[str] | None = None,
) -> Path:
    """A local folder as is; otherwise a hub id through huggingface_hub's cache (its
    `HF_HUB_OFFLINE` and `HF_HUB_CACHE` settings respected), fetching the files that match
    `patterns` (default: a whole model's, `hub_patterns`)."""
    path = Path(model_dir_or_hub_id)
    if path.exists() or not _HUB_ID.fullmatch(str(model_dir_or_hub_id)):
        if not path.is_dir():
            raise UserError(
                f"{model_dir_or_hub_id} is not a folder or a hub id; accepted: a diffusers "
                "folder or a hub id like org/name"
            )
        return path
    import huggingface_hub

    try:
        return Path(
            huggingface_hub.snapshot_download(
                str(model_dir_or_hub_id), allow_patterns=patterns or hub_patterns(variant)
            )
        )
    except Exception as error:  # network, authentication, missing repo, offline cache miss
        raise UserError(
            f"hub id {model_dir_or_hub_id} could not be fetched: {first_line(error)}"
        ) from None


def load_network(
    directory: Path,
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    variant: str | None = None,
) -> nnx.Module:
    """One network folder, in the jaxdiff or the diffusers / transformers format."""
    if (directory / native.CONFIG).is_file():
        return native.load(directory, dtype=dtype, param_dtype=param_dtype)
    return from_diffusers(directory, dtype=dtype, param_dtype=param_dtype, variant=variant)


def load_component(
    component_dir_or_hub_id: str | Path,
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    variant: str | None = None,
) -> nnx.Module:
    """One network from its own folder or hub repository (a ControlNet's, e.g.
    "lllyasviel/sd-controlnet-canny"), in the jaxdiff or the diffusers format; without weights
    of `variant` it reads the default ones (with a warning)."""
    patterns = network_patterns("", variant) + network_patterns("", None) * bool(variant)
    directory = resolve_model_dir(component_dir_or_hub_id, variant, patterns)
    return load_network(directory, dtype=dtype, param_dtype=param_dtype, variant=variant)


def read_model_index(directory: Path) -> dict[str, Any]:
    """A model folder's model_index.json, after checking the folder has every component: the
    UNet, the VAE, the scheduler and a text encoder with its tokenizer (or two, SDXL's)."""
    path = directory / "model_index.json"
    if not path.is_file():
        raise UserError(
            f"{directory} has no model_index.json; accepted: a diffusers model folder "
            "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    model_index = read_json_object(path)
    second = any((directory / name).is_dir() for name in TEXT_PAIRS[1])
    required = ["unet", "vae", "scheduler", *(TEXT_PAIRS[1] if second else TEXT_PAIRS[0])]
    if not second or (directory / "text_encoder").is_dir():  # SDXL's refiner has no first
        required += TEXT_PAIRS[0]
    missing = [name for name in dict.fromkeys(required) if not (directory / name).is_dir()]
    if missing:
        raise UserError(f"{directory} lacks the component folders {', '.join(missing)}")
    return model_index


def model_networks(directory: Path) -> tuple[list[str], list[str]]:
    """The network folders of a checked model folder (`read_model_index`), and the folders
    copied as they are (tokenizers, then the schedulers)."""
    pairs = [pair for pair in TEXT_PAIRS if (directory / pair[0]).is_dir()]
    schedulers = [
        "scheduler",
        *(["low_res_scheduler"] * (directory / "low_res_scheduler").is_dir()),
    ]
    return ["unet", "vae", *(p[0] for p in pairs)], [*(p[1] for p in pairs), *schedulers]


def load_pipeline_components(
    model_dir_or_hub_id: str | Path,
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    variant: str | None = None,
    sdxl: bool | None = None,
) -> PipelineComponents:
    """unet, vae, text_encoder (NNX, weights loaded), tokenizer and scheduler config of a model;
    SDXL's text_encoder_2 and tokenizer_2 too (its refiner has no text_encoder and tokenizer).

    Args:
      model_dir_or_hub_id: a diffusers-format folder or a hub id such as
        "stable-diffusion-v1-5/stable-diffusion-v1-5".
      dtype, param_dtype: compute and parameter dtypes of the networks.
      variant: weights variant ("fp16" reads `*.fp16.safetensors`).
      sdxl: True or False refuses, before any weight is read, a model that is not or is SDXL.
    """
    from transformers import AutoTokenizer

    directory = resolve_model_dir(model_dir_or_hub_id, variant)
    model_index = read_model_index(directory)
    networks, copied = model_networks(directory)
    if sdxl and "text_encoder_2" not in networks:
        raise UserError(
            f"{model_dir_or_hub_id} has no text_encoder_2: not an SDXL model; use StableDiffusion"
        )
    if sdxl is False and "text_encoder_2" in networks:
        raise UserError(
            f"{model_dir_or_hub_id} is an SDXL model (text_encoder_2); use StableDiffusionXL"
        )
    parts: dict[str, Any] = {"text_encoder": None, "tokenizer": None}
    for name in networks:
        parts[name] = load_network(
            directory / name, dtype=dtype, param_dtype=param_dtype, variant=variant
        )
    for name in copied:
        if name.startswith("tokenizer"):
            parts[name] = AutoTokenizer.from_pretrained(directory / name)
    configs = {}
    for name in ("scheduler", "low_res_scheduler"):
        path = directory / name / "scheduler_config.json"
        if name in copied and not path.is_file():
            raise UserError(f"{directory} has no {name}/scheduler_config.json")
        configs[f"{name}_config"] = read_json_object(path) if name in copied else None
    return PipelineComponents(**parts, **configs, model_index=model_index)
