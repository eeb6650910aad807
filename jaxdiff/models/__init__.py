"""Flax NNX models: the conditional UNet and its ControlNet, the class-conditional DiT, the
text-conditioned MMDiT (SD3), the KL autoencoder and the CLIP text encoder.

Module trees follow diffusers' `UNet2DConditionModel` / `AutoencoderKL` and transformers'
`CLIPTextModel`, in NHWC layout; size variants are the named `*_PRESETS`.
"""

from jaxdiff.models.clip_text import (
    CLIP_TEXT_PRESETS,
    CLIPTextOutput,
    CLIPTextTransformer,
)
from jaxdiff.models.clip_vision import CLIP_VISION_PRESETS, CLIPVisionOutput, CLIPVisionTransformer
from jaxdiff.models.controlnet import ControlNet
from jaxdiff.models.dit import DIT_PRESETS, DiT
from jaxdiff.models.layers import LOGICAL_AXES
from jaxdiff.models.mmdit import MMDIT_PRESETS, MMDiT
from jaxdiff.models.unet import DOWN_BLOCK_TYPES, UNET_PRESETS, UP_BLOCK_TYPES, UNet
from jaxdiff.models.vae import VAE_PRESETS, AutoencoderKL

__all__ = [
    "CLIP_TEXT_PRESETS",
    "CLIP_VISION_PRESETS",
    "DIT_PRESETS",
    "DOWN_BLOCK_TYPES",
    "LOGICAL_AXES",
    "MMDIT_PRESETS",
    "UNET_PRESETS",
    "UP_BLOCK_TYPES",
    "VAE_PRESETS",
    "AutoencoderKL",
    "CLIPTextOutput",
    "CLIPTextTransformer",
    "CLIPVisionOutput",
    "CLIPVisionTransformer",
    "ControlNet",
    "DiT",
    "MMDiT",
    "UNet",
]
