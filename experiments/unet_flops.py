"""Parameters and forward FLOPs of the Stable Diffusion UNets at their native sizes, abstractly.

Each UNet is built with `jaxdiff.models.abstract.eval_shape` (no weights in memory) and its
forward pass for one image without guidance is lowered, not compiled; the FLOPs are XLA's cost
analysis of that program. Prints a markdown table (BENCHMARKS.md).

    python experiments/unet_flops.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdiff.models import UNET_PRESETS, UNet  # noqa: E402
from jaxdiff.models.abstract import eval_shape  # noqa: E402

# preset -> (image size, text tokens, pooled text width with SDXL's 6 micro-conditioning numbers)
MODELS = {"sd15": (512, 77, None), "sd2": (768, 77, None), "sdxl": (1024, 77, 1280)}


def forward_flops(preset: str, size: int, tokens: int, pooled: int | None) -> tuple[int, float]:
    """(parameters, forward FLOPs of one image) of `UNET_PRESETS[preset]`."""
    config = UNET_PRESETS[preset]
    graphdef, state = nnx.split(eval_shape(lambda: UNet(**config, rngs=nnx.Rngs(0))))
    spec = jax.ShapeDtypeStruct
    x = spec((1, size // 8, size // 8, config["in_channels"]), jnp.float32)
    context = spec((1, tokens, config["cross_attention_dim"]), jnp.float32)
    added = {}
    if pooled is not None:
        added = {
            "text_embeds": spec((1, pooled), jnp.float32),
            "time_ids": spec((1, 6), jnp.float32),
        }

    def forward(state, x, t, context, added):
        return nnx.merge(graphdef, state)(x, t, context, **added)

    lowered = jax.jit(forward).lower(state, x, spec((1,), jnp.float32), context, added)
    parameters = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(state, nnx.Param)))
    return parameters, lowered.cost_analysis()["flops"]


def main() -> None:
    print("| UNet | image | parameters | forward TFLOP per image |\n|---|---:|---:|---:|")
    for preset, (size, tokens, pooled) in MODELS.items():
        parameters, flops = forward_flops(preset, size, tokens, pooled)
        print(f"| {preset} | {size}² | {parameters:,} | {flops / 1e12:.3f} |")


if __name__ == "__main__":
    main()
