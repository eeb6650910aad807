"""diffusers' `UNet2DConditionModel`, `ControlNetModel`, `AutoencoderKL`,
`DiTTransformer2DModel` and `SD3Transformer2DModel`: config options and name tables.

Verified against diffusers 0.42 (the tests compare `defaults` with the constructors' signatures
and every converted model's output with diffusers' own).
"""

from __future__ import annotations

from typing import Any

from jaxdiff.convert.name_tables import Layout, NameTable, Rule
from jaxdiff.convert.reference_config import ReferenceConfig
from jaxdiff.errors import UserError
from jaxdiff.models.unet import ENCODER_ARGUMENTS

DIFFUSERS_VERSION = "0.42.1"
"""The diffusers version whose format the tables were verified against (written to configs)."""

_CONV = r"(.+\.)?(conv_in|conv_out|conv1|conv2|conv_shortcut|conv|quant_conv|post_quant_conv)"
_NORM = r"(.+\.)?(conv_norm_out|norm|norm1|norm2|norm3|group_norm)"
_LINEAR = (
    r"(time_embedding|add_embedding)\.linear_[12]"
    r"|.+\.(time_emb_proj|to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2)"
)


_CONTROLNET_CONV = r"controlnet_(cond_embedding\.blocks\.\d+|down_blocks\.\d+|mid_block)"


def unet_table(arguments: dict[str, Any]) -> NameTable:
    """The UNet's and the ControlNet's table; transformer `proj_in` / `proj_out` are Linear with
    `use_linear_projection` (SD 2), else 1x1 convolutions."""
    projection = Layout.LINEAR if arguments["use_linear_projection"] else Layout.CONV
    return NameTable(
        rules=(
            Rule(_CONV, "weight", "kernel", Layout.CONV),
            Rule(_CONTROLNET_CONV, "weight", "kernel", Layout.CONV),
            Rule(r".+\.proj_(in|out)", "weight", "kernel", projection),
            Rule(_LINEAR, "weight", "kernel", Layout.LINEAR),
            Rule(_NORM, "weight", "scale"),
            Rule(r"class_embedding", "weight", "embedding"),
            Rule(r".+", "bias", "bias"),
        )
    )


def vae_table(arguments: dict[str, Any]) -> NameTable:
    """The autoencoder's table; reads the mid-block attention's pre-0.14 names too."""
    del arguments
    return NameTable(
        rules=(
            Rule(_CONV, "weight", "kernel", Layout.CONV),
            Rule(_LINEAR, "weight", "kernel", Layout.LINEAR),
            Rule(_NORM, "weight", "scale"),
            Rule(r".+", "bias", "bias"),
        ),
        legacy=(
            (r"\.query$", ".to_q"),
            (r"\.key$", ".to_k"),
            (r"\.value$", ".to_v"),
            (r"\.proj_attn$", ".to_out.0"),
        ),
    )


_DIT_LINEAR = (
    r"(.+\.)?(linear_1|linear_2|linear|to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2"
    r"|proj_out_1|proj_out_2)"
)


def dit_table(arguments: dict[str, Any]) -> NameTable:
    """The DiT's table (its norms have parameters only with `norm_elementwise_affine`)."""
    del arguments
    return NameTable(
        rules=(
            Rule(r"pos_embed\.proj", "weight", "kernel", Layout.CONV),
            Rule(r".+\.embedding_table", "weight", "embedding"),
            Rule(_DIT_LINEAR, "weight", "kernel", Layout.LINEAR),
            Rule(r".+\.norm3", "weight", "scale"),
            Rule(r".+", "bias", "bias"),
        )
    )


def mmdit_table(arguments: dict[str, Any]) -> NameTable:
    """The MMDiT's table: every weight but the patch convolution's, the position buffer's and
    the RMS norms' is a Linear's."""
    del arguments
    return NameTable(
        rules=(
            Rule(r"pos_embed\.proj", "weight", "kernel", Layout.CONV),
            Rule(r"pos_embed", "pos_embed", "pos_embed"),
            Rule(r".+\.norm_(q|k|added_q|added_k)", "weight", "scale"),
            Rule(r".+", "weight", "kernel", Layout.LINEAR),
            Rule(r".+", "bias", "bias"),
        )
    )


UNET_CONFIG = ReferenceConfig(
    class_name="UNet2DConditionModel",
    defaults={
        "sample_size": None,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": 0.0,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-05,
        "cross_attention_dim": 1280,
        "transformer_layers_per_block": 1,
        "reverse_transformer_layers_per_block": None,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "attention_head_dim": 8,
        "num_attention_heads": None,
        "dual_cross_attention": False,
        "use_linear_projection": False,
        "class_embed_type": None,
        "addition_embed_type": None,
        "addition_time_embed_dim": None,
        "num_class_embeds": None,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "resnet_skip_time_act": False,
        "resnet_out_scale_factor": 1.0,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "time_embedding_act_fn": None,
        "timestep_post_act": None,
        "time_cond_proj_dim": None,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "projection_class_embeddings_input_dim": None,
        "attention_type": "default",
        "class_embeddings_concat": False,
        "mid_block_only_cross_attention": None,
        "cross_attention_norm": None,
        "addition_embed_type_num_heads": 64,
    },
    arguments=(
        *ENCODER_ARGUMENTS,
        "sample_size",
        "out_channels",
        "up_block_types",
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
        "num_class_embeds",
    ),
)

CONTROLNET_CONFIG = ReferenceConfig(
    class_name="ControlNetModel",
    defaults={
        "in_channels": 4,
        "conditioning_channels": 3,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": UNET_CONFIG.defaults["down_block_types"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-05,
        "cross_attention_dim": 1280,
        "transformer_layers_per_block": 1,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "attention_head_dim": 8,
        "num_attention_heads": None,
        "use_linear_projection": False,
        "class_embed_type": None,
        "addition_embed_type": None,
        "addition_time_embed_dim": None,
        "num_class_embeds": None,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "projection_class_embeddings_input_dim": None,
        "controlnet_conditioning_channel_order": "rgb",
        "conditioning_embedding_out_channels": (16, 32, 96, 256),
        "global_pool_conditions": False,
        "addition_embed_type_num_heads": 64,
    },
    arguments=(
        *ENCODER_ARGUMENTS,
        "conditioning_channels",
        "conditioning_embedding_out_channels",
        "controlnet_conditioning_channel_order",
        "global_pool_conditions",
    ),
)

VAE_CONFIG = ReferenceConfig(
    class_name="AutoencoderKL",
    defaults={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",),
        "up_block_types": ("UpDecoderBlock2D",),
        "block_out_channels": (64,),
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 32,
        "scaling_factor": 0.18215,
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    },
    arguments=(
        "in_channels",
        "out_channels",
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "latent_channels",
        "norm_num_groups",
        "sample_size",
        "scaling_factor",
        "force_upcast",
        "mid_block_add_attention",
    ),
)

DIT_CONFIG = ReferenceConfig(
    class_name="DiTTransformer2DModel",
    defaults={
        "num_attention_heads": 16,
        "attention_head_dim": 72,
        "in_channels": 4,
        "out_channels": None,
        "num_layers": 28,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": 32,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-05,
    },
    arguments=(
        "num_attention_heads",
        "attention_head_dim",
        "in_channels",
        "out_channels",
        "num_layers",
        "sample_size",
        "patch_size",
        "num_embeds_ada_norm",
        "activation_fn",
        "attention_bias",
        "upcast_attention",
        "norm_elementwise_affine",
        "norm_eps",
    ),
    ignored=("norm_num_groups",),  # a DiTTransformer2DModel option that nothing uses
)

# The class name and options DiT checkpoints were first saved with (facebook/DiT-XL-2-256):
# diffusers' `Transformer2DModel`, which it loads as a `DiTTransformer2DModel` when its norm is
# adaLN-Zero. Its own defaults fill the options a config leaves out; the options a DiT lacks must
# hold the values that make it one.
LEGACY_DIT_CONFIG = ReferenceConfig(
    class_name="Transformer2DModel",
    defaults={
        "num_attention_heads": 16,
        "attention_head_dim": 88,
        "in_channels": None,
        "out_channels": None,
        "num_layers": 1,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "cross_attention_dim": None,
        "attention_bias": False,
        "sample_size": None,
        "num_vector_embeds": None,
        "patch_size": None,
        "activation_fn": "geglu",
        "num_embeds_ada_norm": None,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "double_self_attention": False,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",  # Transformer2DModel's default is "layer_norm": not a DiT
        "norm_elementwise_affine": True,
        "norm_eps": 1e-05,
        "attention_type": "default",
        "caption_channels": None,
        "interpolation_scale": None,
        "use_additional_conditions": None,
    },
    arguments=DIT_CONFIG.arguments,
    ignored=DIT_CONFIG.ignored,
)

_MMDIT_DEFAULTS = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 18,
    "attention_head_dim": 64,
    "num_attention_heads": 18,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1152,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 96,
    "dual_attention_layers": (),
    "qk_norm": None,
}
MMDIT_CONFIG = ReferenceConfig(
    class_name="SD3Transformer2DModel",
    defaults=_MMDIT_DEFAULTS,
    arguments=tuple(_MMDIT_DEFAULTS),
)

# diffusers lets these be one value per level; jaxdiff's UNet takes one value for all levels.
_UNIFORM_PER_LEVEL = ("layers_per_block", "cross_attention_dim")


def _uniform_arguments(
    reference: ReferenceConfig, config: dict[str, Any], source: str
) -> dict[str, Any]:
    """The arguments of a UNet-like config, each per-level option given once for all levels."""
    arguments = reference.to_arguments(config, source)
    for key in _UNIFORM_PER_LEVEL:
        value = arguments[key]
        if isinstance(value, tuple):
            if len(set(value)) != 1:
                raise UserError(
                    f"{source}: {reference.class_name} option {key}={list(value)} differs "
                    "between levels; accepted: one value for every level"
                )
            arguments[key] = value[0]
    return arguments


def unet_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`UNet` arguments of a diffusers `UNet2DConditionModel` config; `only_cross_attention`
    given per level with one value for all is that value."""
    arguments = _uniform_arguments(UNET_CONFIG, config, source)
    flags = arguments["only_cross_attention"]
    if isinstance(flags, tuple) and len(set(flags)) == 1:
        arguments["only_cross_attention"] = flags[0]
    return arguments


def controlnet_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`ControlNet` arguments of a diffusers `ControlNetModel` config."""
    return _uniform_arguments(CONTROLNET_CONFIG, config, source)


def vae_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`AutoencoderKL` arguments of a diffusers `AutoencoderKL` config."""
    arguments = VAE_CONFIG.to_arguments(config, source)
    levels = len(arguments["block_out_channels"])
    for key, block in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        types = arguments.pop(key)
        if types != (block,) * levels:
            raise UserError(
                f"{source}: AutoencoderKL option {key}={list(types)} is not supported; accepted: "
                f"{block} for each of the {levels} levels"
            )
    return arguments


def dit_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`DiT` arguments of a diffusers `DiTTransformer2DModel` config."""
    return DIT_CONFIG.to_arguments(config, source)


def legacy_dit_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`DiT` arguments of a DiT checkpoint's `Transformer2DModel` config."""
    return LEGACY_DIT_CONFIG.to_arguments(config, source)


def mmdit_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`MMDiT` arguments of a diffusers `SD3Transformer2DModel` config."""
    return MMDIT_CONFIG.to_arguments(config, source)


def mmdit_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A complete diffusers `SD3Transformer2DModel` config for `MMDiT` arguments."""
    return MMDIT_CONFIG.to_config(arguments)


def dit_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A complete diffusers `DiTTransformer2DModel` config for `DiT` arguments."""
    return DIT_CONFIG.to_config(arguments)


def unet_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A complete diffusers `UNet2DConditionModel` config for `UNet` arguments."""
    return UNET_CONFIG.to_config(arguments)


def controlnet_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A complete diffusers `ControlNetModel` config for `ControlNet` arguments."""
    return CONTROLNET_CONFIG.to_config(arguments)


def vae_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """A complete diffusers `AutoencoderKL` config for `AutoencoderKL` arguments."""
    levels = len(arguments["block_out_channels"])
    return VAE_CONFIG.to_config(
        {
            **arguments,
            "down_block_types": ("DownEncoderBlock2D",) * levels,
            "up_block_types": ("UpDecoderBlock2D",) * levels,
        }
    )
