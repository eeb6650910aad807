"""Tiny random diffusers / transformers reference models, their inputs, and what makes a parity
test against them a proof (a wrong implementation fails it):

- `perturb`: every parameter far from its initial value, zero-initialised ones included;
- `assert_far_from_flat`: the reference outputs vary, so that errors show in them;
- `nudged`: weights moved by a small amount, for a deliberately wrong run that must miss the
  reference by at least 10x the test's tolerance.

conftest.py builds each reference with `perturb`ed random weights and saves it with the library's
own `save_pretrained`.
"""

import json
import string
import sys
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

UNET_CONFIGS = {
    # SD 1.x layout: conv projections, one head count for all levels.
    "sd1": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=8,
        sample_size=8,
    ),
    # SD 2.x layout: Linear projections, heads per level, upcast attention.
    "sd2": dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(1, 2, 4),
        cross_attention_dim=24,
        norm_num_groups=8,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    # The 9-channel inpainting UNet.
    "inpaint": dict(
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=32,
        norm_num_groups=8,
    ),
    # The remaining options: first attention to the context (given per level, as the x4
    # upscaler's), two transformer blocks per level (given per level), the other time-projection
    # convention, a table of class embeddings (the x4 upscaler's noise level).
    "options": dict(
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=(24, 24),
        norm_num_groups=8,
        only_cross_attention=(False, True),
        transformer_layers_per_block=(2, 2),
        flip_sin_to_cos=False,
        freq_shift=1,
        num_class_embeds=7,
    ),
    # SDXL's layout: no attention at the top level, transformer depth per level, heads per level,
    # Linear projections, the pooled text and six micro-conditioning numbers added to the time
    # embedding (8 + 6 x 4 = 32 features).
    "sdxl": dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(1, 2, 4),
        cross_attention_dim=24,
        norm_num_groups=8,
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=32,
    ),
}


def added_conditioning(config: dict, batch: int = 2, seed: int = 2) -> dict[str, np.ndarray]:
    """An SDXL-layout UNet's `text_embeds` [B, P] and `time_ids` [B, 6] (sizes and crop
    offsets in pixels), a UNet with class embeddings its `class_labels` [B]; {} for the
    others."""
    rng = np.random.RandomState(seed)
    if config.get("num_class_embeds"):
        return {"class_labels": rng.permutation(config["num_class_embeds"])[:batch]}
    if config.get("addition_embed_type") != "text_time":
        return {}
    width = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    time_ids = rng.choice([0.0, 64.0, 512.0, 1024.0], (batch, 6)).astype(np.float32)
    return {"text_embeds": rng.randn(batch, width).astype(np.float32), "time_ids": time_ids}


def encoder_options(unet: dict) -> dict:
    """The options of a UNet config that its ControlNet shares."""
    return {
        k: v for k, v in unet.items() if k not in ("up_block_types", "sample_size", "out_channels")
    }


CONTROLNET_CONFIGS = {
    # SD 1.x: the conditioning image at 8x the latents' size, as Stable Diffusion's.
    "sd1": dict(
        **encoder_options(UNET_CONFIGS["sd1"]), conditioning_embedding_out_channels=(8, 8, 16, 16)
    ),
    # SD 2.x layout; a one-channel conditioning image read in BGR order at 2x the latents' size.
    "sd2": dict(
        **encoder_options(UNET_CONFIGS["sd2"]),
        conditioning_channels=1,
        conditioning_embedding_out_channels=(8, 16),
        controlnet_conditioning_channel_order="bgr",
    ),
    # Residuals averaged over their positions (shuffle ControlNets).
    "pooled": dict(
        **encoder_options(UNET_CONFIGS["sd1"]),
        conditioning_embedding_out_channels=(8, 16),
        global_pool_conditions=True,
    ),
}

VAE_CONFIGS = {
    "sd": dict(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ),
    "no_mid_attention": dict(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=4,
        mid_block_add_attention=False,
        scaling_factor=0.5,
    ),
}

# The Stable Diffusion models of the pipeline and training tests: the SD 1.x layouts with one layer
# per level, whose sampling loops and training steps compile in about two thirds of the time.
PIPELINE_UNET = {**UNET_CONFIGS["sd1"], "layers_per_block": 1}
PIPELINE_VAE = {**VAE_CONFIGS["sd"], "layers_per_block": 1}

END_OF_TEXT = 54  # write_tokenizer's end-of-text id
CLIP_BASE = dict(
    vocab_size=60,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=16,
)
CLIP_CONFIGS = {
    # OpenAI CLIP (SD 1.x): quick_gelu, legacy eos id 2 (pooled at the largest id).
    "quick_gelu": ("CLIPTextModel", dict(hidden_act="quick_gelu", eos_token_id=2)),
    # OpenCLIP (SD 2.x): exact gelu, pooled at the first end-of-text id (write_tokenizer's).
    "gelu": ("CLIPTextModel", dict(hidden_act="gelu", eos_token_id=END_OF_TEXT)),
    "projection": (
        "CLIPTextModelWithProjection",
        dict(hidden_act="quick_gelu", eos_token_id=END_OF_TEXT, projection_dim=20),
    ),
}


SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def perturb(model, seed: int = 0) -> None:
    """Adds `0.1 * randn` to every parameter of a torch model, so that norms, biases and
    zero-initialised layers are away from their trivial init (with weights at their init a VAE
    decoder squashes every image to a flat grey)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def assert_far_from_flat(reference: np.ndarray, minimum_std: float = 0.1) -> None:
    """Every example of a reference output `[B, ...]` varies: the std over its elements is above
    `minimum_std` (on the unit scale of images, latents and hidden states)."""
    spread = np.asarray(reference).reshape(len(reference), -1).std(axis=1)  # [B]
    assert spread.min() > minimum_std, f"a reference output is nearly flat: std {spread}"


def nudged(state: Any, fraction: float = 0.01, seed: int = 0, where: str = "") -> Any:
    """`state` (a pytree of arrays, e.g. an `nnx.State`) with its largest array (of those whose
    key path contains `where`) moved by Gaussian noise of `fraction` of that array's RMS: a subtly
    wrong weight."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    leaves = [leaf for _, leaf in flat]
    named = [i for i, (path, _) in enumerate(flat) if where in jax.tree_util.keystr(path)]
    largest = max(named, key=lambda i: np.size(leaves[i]))
    weight = np.asarray(leaves[largest])
    noise = np.random.RandomState(seed).randn(*weight.shape) * np.sqrt(np.mean(weight**2))
    leaves[largest] = (weight + fraction * noise).astype(weight.dtype)
    return jax.tree.unflatten(treedef, leaves)


def build_unet(config: dict):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(**config).eval()
    perturb(model)
    return model


def build_controlnet(config: dict, seed: int = 3):
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel(**config).eval()
    perturb(model, seed=seed)
    return model


def controlnet_inputs(config: dict, batch: int = 2, size: int = 8, seed: int = 1):
    """`unet_inputs` and a conditioning image [B, H, W, Ccond] in [0, 1], as numpy float32."""
    x, t, context = unet_inputs(config, batch, size, seed=seed)
    factor = 2 ** (len(config["conditioning_embedding_out_channels"]) - 1)
    channels = config.get("conditioning_channels", 3)
    rng = np.random.RandomState(seed + 1)
    cond = rng.rand(batch, size * factor, size * factor, channels).astype(np.float32)
    return x, t, context, cond


# A learned-variance DiT (out_channels = 2 x in_channels, as the released ones) with 1,000 classes:
# diffusers' DiTPipeline takes class 1000 as the null class.
DIT_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=1000,
)
DIT_CONFIGS = {
    "learned_variance": DIT_CONFIG,
    # The other options: exact gelu, a feed-forward norm with parameters, no query / key / value
    # bias, attention products in float32, 4x4 patches, the output as wide as the input.
    "options": dict(
        DIT_CONFIG,
        out_channels=None,
        patch_size=4,
        activation_fn="gelu",
        norm_elementwise_affine=True,
        attention_bias=False,
        upcast_attention=True,
    ),
}


def build_dit(config: dict = DIT_CONFIG):
    import torch
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(5)
    model = DiTTransformer2DModel(**config).eval()
    perturb(model, seed=5)
    return model


def dit_inputs(size: int, batch: int = 3, seed: int = 0):
    """(x [B, H, W, 4], timesteps [B], class labels [B], the last the null class) as numpy."""
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, size, size, 4).astype(np.float32)
    t = rng.uniform(0, 1000, batch).astype(np.float32)
    labels = np.array([*rng.randint(0, 1000, batch - 1), 1000])
    return x, t, labels


MMDIT_CONFIG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=12,
    caption_projection_dim=16,
    pooled_projection_dim=10,
    out_channels=4,
    pos_embed_max_size=8,
)
MMDIT_CONFIGS = {
    "sd3": MMDIT_CONFIG,
    # SD3.5 Medium's options: RMS-normalized queries and keys, a second attention in the first
    # blocks; and an output of other width.
    "sd35": dict(MMDIT_CONFIG, qk_norm="rms_norm", dual_attention_layers=(0, 1), out_channels=6),
}


def build_mmdit(config: dict = MMDIT_CONFIG):
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(6)
    model = SD3Transformer2DModel(**config).eval()
    perturb(model, seed=6)
    return model


def mmdit_inputs(size: int, batch: int = 3, tokens: int = 5, seed: int = 0):
    """(x [B, H, W, 4], timesteps [B], context [B, T, 12], pooled [B, 10]) as numpy."""
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, size, size, 4).astype(np.float32)
    t = rng.uniform(0, 1000, batch).astype(np.float32)
    context = rng.randn(batch, tokens, 12).astype(np.float32)
    pooled = rng.randn(batch, 10).astype(np.float32)
    return x, t, context, pooled


def build_vae(config: dict):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    model = AutoencoderKL(**config).eval()
    perturb(model, seed=1)
    return model


def near_deterministic_vae():
    """The pipeline tests' VAE with its posterior log-variance at -40, clamped to -30 (std 3e-7),
    so that diffusers and jaxdiff, each sampling the posterior with its own random numbers, encode
    an image to the same latents."""
    import torch

    vae = build_vae(PIPELINE_VAE)
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent:] = 0.0
        vae.quant_conv.bias[latent:] = -40.0
    return vae


def sdxl_unet(refiner: bool = False) -> dict:
    """A tiny SDXL-layout UNet config (`UNET_CONFIGS["sdxl"]` at two levels) for the text
    encoders of `sdxl_text_encoders`: the context is both encoders' 32 + 32 features (the
    refiner's: the second's 32), the added embedding the second's 20 pooled features and six
    (refiner: five) micro-conditioning numbers x 4."""
    return dict(
        UNET_CONFIGS["sdxl"],
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=32 if refiner else 64,
        projection_class_embeddings_input_dim=20 + (5 if refiner else 6) * 4,
        sample_size=8,
    )


def sdxl_text_encoders() -> tuple:
    """SDXL's two text encoders at the tiny size, as transformers models: `CLIPTextModel` (exact
    gelu) and `CLIPTextModelWithProjection` (20 projected features), with other weights."""
    first, second = build_clip("gelu"), build_clip("projection")
    perturb(second, seed=7)
    return first, second


def build_clip(name: str):
    import torch
    import transformers

    class_name, options = CLIP_CONFIGS[name]
    torch.manual_seed(2)
    config = transformers.CLIPTextConfig(**CLIP_BASE, **options)
    model = getattr(transformers, class_name)(config).eval()
    perturb(model, seed=2)
    return model


def write_tokenizer(
    directory: Path, max_length: int = 16, pad_token: str = "<|endoftext|>"
) -> None:
    """A CLIP BPE tokenizer folder as Stable Diffusion ships it (vocab.json, merges.txt,
    tokenizer_config.json): single letters, one merge, start / end of text (id `END_OF_TEXT`),
    padded with the end of text or, as SDXL's second tokenizer, with `pad_token="!"`."""
    directory.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase)
    tokens = [*letters, *(c + "</w>" for c in letters), "re", "<|startoftext|>", "<|endoftext|>"]
    tokens += [pad_token] if pad_token not in tokens else []
    assert tokens.index("<|endoftext|>") == END_OF_TEXT
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\nr e\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
            }
        )
    )


def save_stable_diffusion(folder: Path, unet, vae, scheduler_config: dict = SD15_SCHEDULER) -> Path:
    """A diffusers `StableDiffusionPipeline` of `unet`, `vae`, a tiny OpenAI-style CLIP text
    encoder and tokenizer and a PNDM scheduler, saved in `folder` with `save_pretrained`."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import AutoTokenizer

    write_tokenizer(folder / "tokenizer")
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=build_clip("quick_gelu"),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=PNDMScheduler.from_config(scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=16,
)
# The tiny tokenizer of `write_tokenizer`: 55 tokens, <|startoftext|> 53, <|endoftext|> 54.
CLIP_MODEL_TEXT = dict(
    vocab_size=60,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    bos_token_id=53,
    eos_token_id=54,
    pad_token_id=54,
)


def save_clip_model(folder: Path, seed: int = 4):
    """(a tiny transformers CLIPModel with an OpenCLIP-style gelu image tower, `folder`): the
    model saved with `save_pretrained`, the tiny tokenizer beside it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=CLIP_MODEL_TEXT,
        vision_config={**CLIP_VISION, "hidden_act": "gelu"},
        projection_dim=16,
        logit_scale_init_value=2.0,
    )
    model = transformers.CLIPModel(config).eval()
    perturb(model, seed=seed)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return model, folder


def unet_inputs(config: dict, batch: int = 2, size: int = 8, tokens: int = 5, seed: int = 0):
    """(x [B, H, W, C], timesteps [B], context [B, T, D]) as numpy float32."""
    rng = np.random.RandomState(seed)
    width = config["cross_attention_dim"]
    width = width[0] if isinstance(width, tuple) else width
    x = rng.randn(batch, size, size, config.get("in_channels", 4)).astype(np.float32)
    t = rng.uniform(0, 1000, batch).astype(np.float32)
    return x, t, rng.randn(batch, tokens, width).astype(np.float32)


FID_REFERENCE = Path(sys.prefix) / "pytorch-fid-reference"


def import_pytorch_fid() -> types.ModuleType:
    """The `pytorch_fid` package with its inception and fid_score modules.

    pytorch-fid and torchvision are installed by the Makefile in `FID_REFERENCE`, outside the
    environment's site-packages: torchvision's PyPI build is made for CUDA torch and breaks
    transformers' model imports wherever it is importable (see conftest.py for how the tests
    import it).
    """
    if str(FID_REFERENCE) not in sys.path:
        sys.path.append(str(FID_REFERENCE))
    import pytorch_fid.fid_score
    import pytorch_fid.inception

    return pytorch_fid
