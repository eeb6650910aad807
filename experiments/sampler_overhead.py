"""Sampler overhead and compile time, against the demo UNet (configs/shapes_t2i.py).

- Overhead per step: each sampler runs with a zero-cost denoiser (`D(x, sigma) = x`) on the demo's
  latent batch; `(time(100 steps) - time(10 steps)) / 90` removes the fixed dispatch cost. It is
  reported as a fraction of one guided forward pass of the demo UNet (text-conditioned, batch
  doubled for classifier-free guidance) at the same batch. Medians over repeats, same process.
- Compile time of a whole guided sampling loop with the UNet at 10 and 100 steps: with
  `lax.scan` the loop body is compiled once, so the two should be about equal.

    python experiments/sampler_overhead.py [--batch 16] [--repeats 7] [--out runs/overhead.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxdiff import samplers  # noqa: E402
from jaxdiff.configuration import load_config  # noqa: E402
from jaxdiff.diffusion import Diffusion, karras, make_process  # noqa: E402
from jaxdiff.models.unet import UNet  # noqa: E402

LATENT = (8, 8, 4)  # the demo's 32x32 images through its 4x autoencoder
COMPILE_SAMPLERS = ("heun", "dpmpp_2m", "unipc")


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def guided_denoiser(batch: int):
    """The demo UNet (random weights: the cost does not depend on them) as a CFG denoiser."""
    config = load_config(str(ROOT / "configs" / "shapes_t2i.py"))
    unet = UNet(
        in_channels=LATENT[-1],
        out_channels=LATENT[-1],
        cross_attention_dim=config.model.text.hidden_size,
        **config.model.unet,
        rngs=nnx.Rngs(0),
    )
    diffusion = Diffusion(
        process=make_process(config.diffusion.process, **config.diffusion.process_options),
        parameterization=config.diffusion.parameterization,
    )
    tokens = config.model.text.max_position_embeddings
    context = jnp.zeros((batch, tokens, config.model.text.hidden_size))
    return samplers.cfg(diffusion.denoiser(unet), context, context, 3.0), diffusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sampler_overhead.md")
    args = parser.parse_args()

    denoise, diffusion = guided_denoiser(args.batch)
    x = jax.random.normal(jax.random.key(0), (args.batch, *LATENT))
    forward = jax.jit(lambda x: denoise(x, jnp.float32(1.0)))
    t_model = median_seconds(lambda: forward(x), args.repeats)
    key = jax.random.key(1)

    lines = [
        f"One guided forward pass of the demo UNet, batch {args.batch}: {t_model * 1e3:.2f} ms",
        "",
        "| sampler | overhead per step (µs) | fraction of a UNet pass |",
        "|---|---:|---:|",
    ]
    for name in samplers.names():
        if name == "dpm_adaptive":
            continue  # adaptive steps: no fixed step count to time

        def run_at(n, name=name):
            sigmas = karras(n, 0.03, 14.6)
            fn = jax.jit(lambda x, s: samplers.get(name)(lambda x, _: x, x, s, key))
            return lambda: fn(x, sigmas)

        t10, t100 = (median_seconds(run_at(n), args.repeats) for n in (10, 100))
        per_step = max(t100 - t10, 0.0) / 90
        lines.append(f"| {name} | {per_step * 1e6:.1f} | {per_step / t_model:.2%} |")
        print(lines[-1], flush=True)

    lines += [
        "",
        "| sampler | compile at 10 steps (s) | compile at 100 steps (s) |",
        "|---|---:|---:|",
    ]
    for name in COMPILE_SAMPLERS:
        times = []
        for n in (10, 100):
            sigmas = diffusion.sampling_sigmas(n)
            fn = jax.jit(lambda x, s, name=name: samplers.get(name)(denoise, x, s, key))
            start = time.perf_counter()
            fn.lower(x, sigmas).compile()
            times.append(time.perf_counter() - start)
        lines.append(f"| {name} | {times[0]:.2f} | {times[1]:.2f} |")
        print(lines[-1], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
