"""Whole model folders, hub ids through the offline cache, and the reference config tables."""

import copy
import inspect
import json
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from jaxdiff.convert import convert, from_diffusers, load_pipeline_components
from jaxdiff.convert.diffusers import (
    CONTROLNET_CONFIG,
    DIT_CONFIG,
    MMDIT_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
)
from jaxdiff.convert.pipeline_components import hub_patterns, load_component
from jaxdiff.convert.safetensors_io import read_safetensors, write_safetensors
from jaxdiff.convert.transformers_clip import CLIP_PROJECTION_CONFIG
from jaxdiff.models import AutoencoderKL, CLIPTextTransformer, ControlNet, UNet


def _check_components(parts, folder):
    assert isinstance(parts.unet, UNet)
    assert isinstance(parts.vae, AutoencoderKL)
    assert isinstance(parts.text_encoder, CLIPTextTransformer)
    assert parts.vae.scaling_factor == pytest.approx(0.18215)
    assert parts.scheduler_config["prediction_type"] == "v_prediction"
    assert parts.scheduler_config["_class_name"] == "DDIMScheduler"
    assert parts.model_index["_class_name"] == "StableDiffusionPipeline"
    ids = parts.tokenizer(["a red cat"], padding="max_length", max_length=16).input_ids
    assert ids[0][:2] == [53, 26]  # <|startoftext|>, "a</w>"
    out = parts.text_encoder(np.asarray(ids))
    assert out.last_hidden_state.shape == (1, 16, 32)


def test_loads_a_diffusers_model_folder(saved_pipeline):
    _check_components(load_pipeline_components(saved_pipeline), saved_pipeline)


def test_loads_a_folder_converted_to_the_jaxdiff_format(saved_pipeline, tmp_path):
    convert(saved_pipeline, tmp_path / "native", "jaxdiff")
    assert (tmp_path / "native" / "unet" / "jaxdiff_model.json").is_file()
    _check_components(load_pipeline_components(tmp_path / "native"), saved_pipeline)


def _fill_hub_cache(cache, repo_id, source):
    """The layout huggingface_hub keeps for a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)


def test_hub_id_resolves_through_the_offline_cache(saved_pipeline, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    _fill_hub_cache(tmp_path / "hub", "tiny-org/tiny-sd", saved_pipeline)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    _check_components(load_pipeline_components("tiny-org/tiny-sd"), saved_pipeline)


def test_component_hub_id_resolves_through_the_offline_cache(
    saved_controlnets, tmp_path, monkeypatch
):
    """A ControlNet's repository holds one network at its top."""
    import huggingface_hub.constants as hub

    _, folder = saved_controlnets["sd1"]
    _fill_hub_cache(tmp_path / "hub", "tiny-org/tiny-controlnet", folder)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    loaded = load_component("tiny-org/tiny-controlnet")
    assert isinstance(loaded, ControlNet)
    same = jax.tree.map(np.array_equal, nnx.state(loaded), nnx.state(from_diffusers(folder)))
    assert all(jax.tree.leaves(same))


def test_hub_patterns_take_one_weights_variant():
    from fnmatch import fnmatch

    default = [
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors.index.json",
    ]
    half = [
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    never = [
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/pytorch_model.fp16.bin",
        "safety_checker/model.safetensors",
        "v1-5-pruned.ckpt",
    ]

    def taken(variant):
        files = default + half + never
        return [f for f in files if any(fnmatch(f, p) for p in hub_patterns(variant))]

    assert taken(None) == default
    assert taken("fp16") == half


def test_sharded_variant_written_by_diffusers_loads(saved_unets, tmp_path):
    ref, folder = saved_unets["options"]
    half_ref = copy.deepcopy(ref).to(torch.float16)
    half_ref.save_pretrained(tmp_path, variant="fp16", max_shard_size="100KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    half = from_diffusers(tmp_path, variant="fp16", param_dtype=np.float16)
    full = from_diffusers(folder)
    for a, b in zip(
        jax.tree.leaves(nnx.state(half, nnx.Param)),
        jax.tree.leaves(nnx.state(full, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.float16))


def test_transformers_pickle_weights_load(saved_clips, tmp_path):
    ref, folder = saved_clips["gelu"]
    # transformers 5 writes only safetensors; older versions wrote this file.
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    shutil.copy(folder / "config.json", tmp_path)
    for a, b in zip(
        jax.tree.leaves(nnx.state(from_diffusers(tmp_path), nnx.Param)),
        jax.tree.leaves(nnx.state(from_diffusers(folder), nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_half_precision_variant_is_read_when_asked(saved_pipeline, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_pipeline, folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = read_safetensors(weights)
    half = {k: v.astype(np.float16) for k, v in tensors.items()}
    write_safetensors(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", half)
    with pytest.warns(UserWarning, match="no fp16 weights"):  # the other networks fall back
        parts = load_pipeline_components(folder, variant="fp16")
    kernel = np.asarray(parts.vae.decoder.conv_out.kernel[...])
    expected = half["decoder.conv_out.weight"].astype(np.float32).transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(kernel, expected)


@pytest.mark.parametrize(
    ("table", "reference"),
    [
        (UNET_CONFIG, "UNet2DConditionModel"),
        (CONTROLNET_CONFIG, "ControlNetModel"),
        (VAE_CONFIG, "AutoencoderKL"),
        (DIT_CONFIG, "DiTTransformer2DModel"),
        (MMDIT_CONFIG, "SD3Transformer2DModel"),
    ],
)
def test_tables_list_every_diffusers_option_with_its_default(table, reference):
    import diffusers

    signature = inspect.signature(getattr(diffusers, reference).__init__)
    defaults = {k: p.default for k, p in signature.parameters.items() if k != "self"}
    assert dict(table.defaults) == defaults


def test_clip_table_defaults_are_transformers_defaults():
    from transformers import CLIPTextConfig

    reference = CLIPTextConfig().to_dict()
    assert {k: reference[k] for k in CLIP_PROJECTION_CONFIG.defaults} == dict(
        CLIP_PROJECTION_CONFIG.defaults
    )


def test_model_index_keeps_only_the_converted_components(saved_pipeline, tmp_path):
    convert(saved_pipeline, tmp_path / "out", "diffusers")
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    source = json.loads((saved_pipeline / "model_index.json").read_text())
    assert index["unet"] == source["unet"] and index["scheduler"] == source["scheduler"]
    assert index["safety_checker"] == [None, None]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]


_SD_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_SD_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
_SD_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": _SD_DOWN,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": _SD_UP,
}
# The config.json files the Stable Diffusion hub models ship, and their reference counts.
HUB_CONFIGS = {
    "sd15_unet": (_SD_UNET, 859_520_964),
    "sd15_inpainting_unet": ({**_SD_UNET, "in_channels": 9}, 859_535_364),
    "sd21_unet": (
        {
            **_SD_UNET,
            "_diffusers_version": "0.10.0.dev0",
            "attention_head_dim": [5, 10, 20, 20],
            "cross_attention_dim": 1024,
            "dual_cross_attention": False,
            "num_class_embeds": None,
            "only_cross_attention": False,
            "sample_size": 96,
            "upcast_attention": True,
            "use_linear_projection": True,
        },
        865_910_724,
    ),
    # stabilityai/stable-diffusion-xl-base-1.0, its options beside SD 1.5's
    "sdxl_unet": (
        {
            **_SD_UNET,
            "_diffusers_version": "0.19.0.dev0",
            "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "class_embed_type": None,
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "num_attention_heads": None,
            "projection_class_embeddings_input_dim": 2816,
            "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "upcast_attention": None,
            "use_linear_projection": True,
        },
        2_567_463_684,  # diffusers' UNet2DConditionModel from this config on torch's meta device
    ),
    "sd_vae": (
        {
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.6.0",
            "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3,
            "latent_channels": 4,
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "out_channels": 3,
            "sample_size": 512,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
        },
        83_653_863,
    ),
    "clip_vit_l14_text": (
        {
            "_name_or_path": "openai/clip-vit-large-patch14",
            "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "dropout": 0.0,
            "eos_token_id": 2,
            "hidden_act": "quick_gelu",
            "hidden_size": 768,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 3072,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "model_type": "clip_text_model",
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "pad_token_id": 1,
            "projection_dim": 768,
            "torch_dtype": "float32",
            "transformers_version": "4.22.0.dev0",
            "vocab_size": 49408,
        },
        123_060_480,
    ),
}


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_hub_configs_give_the_reference_parameter_counts(name):
    from jaxdiff.convert.components import abstract_model

    config, expected = HUB_CONFIGS[name]
    model = abstract_model(config, name)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(p.shape)) for p in params) == expected


def test_safetensors_folders_load_without_torch(saved_vaes):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from jaxdiff.convert import from_diffusers\n"
        f"from_diffusers({str(saved_vaes['no_mid_attention'][1])!r})\n"
        "loaded = {'torch', 'diffusers', 'transformers'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
