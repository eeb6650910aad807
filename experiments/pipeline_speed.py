"""Stable Diffusion pipeline throughput on CPU: jaxdiff against diffusers' PyTorch pipeline.

A tiny random Stable Diffusion model (UNet 32/64 channels with cross-attention at the first
level, a 4-level VAE so 64x64 images have 8x8x4 latents, a 2-layer CLIP text encoder with 77
tokens), saved by diffusers and loaded by both. 20 DDIM steps, guidance 7.5, the same prompts
and initial latents; the images are checked equal (max abs difference printed). Per batch size:

- images/s of jaxdiff after compilation and of diffusers eager (medians over --repeats calls,
  timed round-robin so changes in the machine's load hit both alike);
- jaxdiff's compile time (first call minus the median warm call);
- a call with new prompts, seed and guidance scale, which must not recompile (counted with
  `jax.monitoring`).

    python experiments/pipeline_speed.py [--repeats 5] [--batches 1 4] [--out FILE.md]

Runs on the machine's default devices (one CPU device unless XLA_FLAGS asks for more);
torch uses as many threads as there are cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from reference_models import perturb, write_tokenizer  # noqa: E402

from jaxdiff.pipelines import StableDiffusion  # noqa: E402

STEPS = 20
GUIDANCE = 7.5
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
PROMPTS = ["a red circle", "a blue square", "two green dots", "a yellow star"]
NEW_PROMPTS = ["a small cat", "the sea at dusk", "an old car", "a tall tree"]


def build_model(folder: Path) -> None:
    """Saves the tiny random SD model with diffusers."""
    import transformers
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=4,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        sample_size=64,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=60,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=2,
        )
    )
    for i, model in enumerate((unet, vae, text_encoder)):
        perturb(model.eval(), seed=i)
    write_tokenizer(folder / "tokenizer_source", max_length=77)
    StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder / "tokenizer_source"),
        scheduler=DDIMScheduler.from_config(SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder / "model")
    (folder / "model" / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(folder: Path, batch: int, repeats: int) -> dict[str, float]:
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    pipe = StableDiffusion.from_pretrained(folder)
    latents = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    settings = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE)

    def run_jaxdiff(prompts=PROMPTS[:batch], **changes):
        noise = latents.permute(0, 2, 3, 1).numpy()
        return pipe(prompts, latents=noise, **(settings | changes))

    def run_diffusers():
        with torch.no_grad():
            return reference(PROMPTS[:batch], latents=latents, output_type="np", **settings).images

    first, images = timed(run_jaxdiff)
    difference = float(np.abs(images - run_diffusers()).max())
    jax_times, torch_times = [], []
    for _ in range(repeats):
        jax_times.append(timed(run_jaxdiff)[0])
        torch_times.append(timed(run_diffusers)[0])
    compiles: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        new_prompt = timed(lambda: run_jaxdiff(NEW_PROMPTS[:batch], seed=1, guidance_scale=5.0))[0]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    jax_time, torch_time = statistics.median(jax_times), statistics.median(torch_times)
    return {
        "batch": batch,
        "jaxdiff_images_per_s": batch / jax_time,
        "diffusers_images_per_s": batch / torch_time,
        "ratio": torch_time / jax_time,
        "compile_s": first - jax_time,
        "new_prompt_s": new_prompt,
        "warm_s": jax_time,
        "recompiles": len(compiles),
        "max_abs_difference": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pipeline_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp))
        rows = [measure(Path(tmp) / "model", b, args.repeats) for b in args.batches]
    lines = [
        f"jaxdiff vs diffusers eager, {STEPS} DDIM steps, guidance {GUIDANCE}, 64x64, "
        f"{jax.device_count()} device(s), torch threads {torch.get_num_threads()}",
        "",
        "| batch | jaxdiff img/s | diffusers img/s | jaxdiff / diffusers | compile s | "
        "new prompt s (warm s) | recompiles | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['jaxdiff_images_per_s']:.2f} | "
            f"{r['diffusers_images_per_s']:.2f} | {r['ratio']:.2f}x | {r['compile_s']:.1f} | "
            f"{r['new_prompt_s']:.3f} ({r['warm_s']:.3f}) | {r['recompiles']} | "
            f"{r['max_abs_difference']:.1e} |"
        )
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
