"""Weights in the diffusers / transformers formats <-> jaxdiff's NNX modules.

unet = from_diffusers("stable-diffusion-v1-5/unet")            # a component folder
parts = load_pipeline_components("stable-diffusion-v1-5/stable-diffusion-v1-5")  # or a folder
to_diffusers(unet, "exported/unet")                             # back to the diffusers format
convert("sd15", "sd15-jaxdiff", to="jaxdiff")                   # `jaxdiff convert`
"""

from jaxdiff.convert import native
from jaxdiff.convert.components import FORMATS, from_diffusers, to_diffusers
from jaxdiff.convert.conversion import convert
from jaxdiff.convert.pipeline_components import PipelineComponents, load_pipeline_components

__all__ = [
    "FORMATS",
    "PipelineComponents",
    "convert",
    "from_diffusers",
    "load_pipeline_components",
    "native",
    "to_diffusers",
]
