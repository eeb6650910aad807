"""Fixtures: tiny random diffusers / transformers models, saved by the reference libraries."""

import pytest
from reference_models import (
    CLIP_CONFIGS,
    CONTROLNET_CONFIGS,
    UNET_CONFIGS,
    VAE_CONFIGS,
    build_clip,
    build_controlnet,
    build_unet,
    build_vae,
    write_tokenizer,
)


def _save_all(tmp_path_factory, kind: str, names, build) -> dict:
    """{name: (reference model, folder it saved itself to)} for each of `names`."""
    out = {}
    for name in names:
        model = build(name)
        folder = tmp_path_factory.mktemp(f"{kind}_{name}")
        model.save_pretrained(folder)
        out[name] = (model, folder)
    return out


@pytest.fixture(scope="session")
def saved_unets(tmp_path_factory):
    """diffusers UNet2DConditionModels for every `UNET_CONFIGS` entry."""
    return _save_all(tmp_path_factory, "unet", UNET_CONFIGS, lambda n: build_unet(UNET_CONFIGS[n]))


@pytest.fixture(scope="session")
def saved_controlnets(tmp_path_factory):
    """diffusers ControlNetModels for every `CONTROLNET_CONFIGS` entry."""
    return _save_all(
        tmp_path_factory,
        "controlnet",
        CONTROLNET_CONFIGS,
        lambda n: build_controlnet(CONTROLNET_CONFIGS[n]),
    )


@pytest.fixture(scope="session")
def saved_vaes(tmp_path_factory):
    """diffusers AutoencoderKLs for every `VAE_CONFIGS` entry."""
    return _save_all(tmp_path_factory, "vae", VAE_CONFIGS, lambda n: build_vae(VAE_CONFIGS[n]))


@pytest.fixture(scope="session")
def saved_clips(tmp_path_factory):
    """transformers CLIP text models for every `CLIP_CONFIGS` entry."""
    return _save_all(tmp_path_factory, "clip", CLIP_CONFIGS, build_clip)


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory, saved_unets, saved_vaes, saved_clips):
    """A tiny Stable Diffusion model folder written by diffusers' StableDiffusionPipeline
    (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path_factory.mktemp("tokenizer_source") / "tokenizer"
    write_tokenizer(tokenizer_dir)
    pipe = StableDiffusionPipeline(
        unet=saved_unets["sd1"][0],
        vae=saved_vaes["sd"][0],
        text_encoder=saved_clips["quick_gelu"][0],
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("pipeline")
    pipe.save_pretrained(folder)
    return folder
