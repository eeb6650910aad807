"""How a PNG of sampled images is written: the text chunks that say how to make it again, and the
enlargement that makes small images visible. ``jaxdiff sample`` and the trainer's previews share
both, so a preview and a sample of the same run read alike."""

from __future__ import annotations

from collections.abc import Sequence

DISPLAY_SIZE = 128  # images smaller than this (pixels) are enlarged towards it


def display_scale(size: int) -> int:
    """The whole-number factor that enlarges images of ``size`` pixels towards ``DISPLAY_SIZE``
    (4 for the 32-pixel shapes; 1 for Stable Diffusion's 512)."""
    return max(1, DISPLAY_SIZE // size)


def sample_text(
    prompts: Sequence[str],
    seed: int,
    sampler: str,
    steps: int,
    guidance: float,
    negative_prompts: Sequence[str] = (),
) -> dict[str, object]:
    """The PNG text of sampled images: the prompts and negative prompts (each joined by " | "),
    the seed and the sampler settings. The writer adds the ``model`` it sampled (a workdir or
    weights)."""
    return {
        "prompt": " | ".join(prompts),
        "negative_prompt": " | ".join(negative_prompts),
        "seed": seed,
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
    }
