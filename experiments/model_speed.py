"""UNet speed on CPU: a training step against PyTorch/diffusers, and SD-1.5 forward throughput.

- Training step (fp32): forward + MSE loss + backward + AdamW update of `TRAIN_UNET` (64/128/128
  channels, attention at 16x16 and 8x8) on 8 32x32x4 latents with a [8, 77, 256] context, for
  jaxdiff's `UNet` (one compiled step, params and optimizer state donated) and diffusers'
  `UNet2DConditionModel` (eager and `torch.compile`d): same config, weights (converted from
  torch's with `jaxdiff.convert`) and batch; equal first-step losses check that both compute
  the same thing.
- SD-1.5 forward (fp32, `UNET_PRESETS["sd15"]`, random weights, one 32x32x4 latent, [1, 77, 768]
  context): GFLOP/s from XLA's cost analysis of the compiled forward, against a compiled 2048^3
  float32 matmul; the torch eager time of the same forward for context.

Every jaxdiff program is compiled with XLA's default CPU options and, as per-compilation options
rather than XLA_FLAGS, with `xla_cpu_experimental_ynn_fusion_type=""` (no YNNPACK library
fusions: dots and convolutions run on XLA's Eigen kernels). The programs of one table are timed
round-robin, one call of each per repeat, so changes in the machine's load hit all alike; times
are medians after two warm-up calls. Writes the tables to --out and the raw numbers next to it.

    python experiments/model_speed.py [--repeats 10] [--out runs/model_speed.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from diffusers import UNet2DConditionModel
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxdiff.convert import from_diffusers  # noqa: E402
from jaxdiff.models.abstract import eval_shape  # noqa: E402
from jaxdiff.models.unet import UNET_PRESETS, UNet  # noqa: E402

TRAIN_UNET: dict[str, Any] = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=256,
    norm_num_groups=32,
)
BATCH, LATENT, TOKENS, MATMUL = 8, (32, 32, 4), 77, 2048
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 1e-2  # AdamW, same in both
XLA_OPTIONS: dict[str, dict[str, str]] = {
    "default": {},
    "YNN fusions off": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def median_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each `fn()` (which returns once its work is done), timed round-robin."""
    for fn in list(fns.values()) * 2:  # warm up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def nnx_copy_of(torch_model: torch.nn.Module) -> UNet:
    """The NNX UNet with the weights of a diffusers one, through a saved diffusers folder."""
    with tempfile.TemporaryDirectory() as folder:
        torch_model.save_pretrained(folder)
        return from_diffusers(folder)


def random_unet(config: dict[str, Any], seed: int = 0) -> UNet:
    """`UNet(**config)` built abstractly and filled with fan-in scaled numpy normals."""
    model = eval_shape(lambda: UNet(**config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = rng.standard_normal(var.shape, dtype=np.float32)
        if path[-1] in ("scale", "bias"):
            value = (path[-1] == "scale") + 0.1 * value
        else:
            value /= np.sqrt(np.prod(var.shape[:-1]))
        var.set_value(jnp.asarray(value))
    return model


def jax_train_step(unet: UNet, batch: tuple[jax.Array, ...], options: dict) -> Callable[[], float]:
    """`step() -> loss` on `batch`; the params and AdamW state are donated to each update."""
    graphdef, params = nnx.split(unet)
    tx = optax.adamw(LR, BETAS[0], BETAS[1], EPS, weight_decay=WEIGHT_DECAY)

    def loss_fn(params: nnx.State, x, t, context, target) -> jax.Array:
        out = nnx.merge(graphdef, params)(x, t, context)  # [B, H, W, C]
        return jnp.mean(jnp.square(out - target))

    def update(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, tx.init(params)]
    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(*state, *batch).compile(options)

    def step() -> float:
        state[0], state[1], loss = compiled(*state, *batch)
        return float(loss)

    return step


def torch_train_step(model: torch.nn.Module, batch: tuple) -> Callable[[], float]:
    """`step() -> loss` on `batch`: forward, backward and a torch AdamW update."""
    opt = torch.optim.AdamW(model.parameters(), LR, BETAS, EPS, WEIGHT_DECAY)
    x, t, context, target = batch

    def step() -> float:
        loss = torch.nn.functional.mse_loss(model(x, t, context).sample, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def train_step_times(repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """(seconds per step of jaxdiff per XLA option set, torch eager and torch.compile, checks)."""
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**TRAIN_UNET)
    rng = np.random.default_rng(0)
    x, target = (rng.standard_normal((BATCH, *LATENT), dtype=np.float32) for _ in range(2))
    t = rng.integers(0, 1000, BATCH)
    ctx = rng.standard_normal((BATCH, TOKENS, TRAIN_UNET["cross_attention_dim"]), np.float32)
    jax_batch = tuple(map(jnp.asarray, (x, t.astype(np.float32), ctx, target)))
    nchw = (0, 3, 1, 2)
    torch_batch = tuple(map(torch.from_numpy, (x.transpose(nchw).copy(), t, ctx)))
    torch_batch += (torch.from_numpy(target.transpose(nchw).copy()),)

    steps = {
        f"jaxdiff, {name}": jax_train_step(nnx_copy_of(ref), jax_batch, options)
        for name, options in XLA_OPTIONS.items()
    }
    steps["torch eager"] = torch_train_step(copy.deepcopy(ref), torch_batch)
    first = {name: step() for name, step in steps.items()}  # same weights: same first loss
    diff = max(abs(loss - first["torch eager"]) for loss in first.values())
    result: dict[str, Any] = {"first loss": first, "first loss max |jaxdiff - torch|": diff}
    try:
        compiled = torch_train_step(torch.compile(ref), torch_batch)
        start = time.perf_counter()
        compiled()
        result["torch.compile first step (s)"] = time.perf_counter() - start
        steps["torch.compile"] = compiled
    except Exception as error:  # a compiler failure is reported, not fatal
        result["torch.compile"] = f"failed: {str(error).strip().splitlines()[0][:100]}"
    return median_seconds(steps, repeats), result


def compiled_call(fn: Callable, args: tuple, options: dict) -> tuple[float, Callable[[], Any]]:
    """(XLA-counted FLOPs, `run() -> result`) of `fn(*args)` compiled with `options`."""
    compiled = jax.jit(fn).lower(*args).compile(options)
    return compiled.cost_analysis()["flops"], lambda: jax.block_until_ready(compiled(*args))


def sd15_times(repeats: int) -> dict[str, Any]:
    """SD-1.5 UNet forward and a large matmul: FLOPs and seconds, jaxdiff and torch eager."""
    config = UNET_PRESETS["sd15"]
    graphdef, params = nnx.split(random_unet(config))
    x = jax.random.normal(jax.random.key(0), (1, *LATENT))  # [1, H, W, C]
    t = jnp.full((1,), 500.0)
    ctx = jax.random.normal(jax.random.key(1), (1, TOKENS, config["cross_attention_dim"]))
    a = jax.random.normal(jax.random.key(2), (MATMUL, MATMUL))
    programs = {
        "unet": (lambda p, *inputs: nnx.merge(graphdef, p)(*inputs), (params, x, t, ctx)),
        "matmul": (jnp.matmul, (a, a)),
    }
    flops, runs = {}, {}
    for kind, (fn, args) in programs.items():
        for name, options in XLA_OPTIONS.items():
            flops[f"{kind}, {name}"], runs[f"{kind}, {name}"] = compiled_call(fn, args, options)
    ref = UNet2DConditionModel(**config).eval()
    nchw = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    torch_args = (nchw, torch.tensor([500]), torch.from_numpy(np.array(ctx)))
    with torch.inference_mode():
        runs["unet, torch eager"] = lambda: ref(*torch_args)
        seconds = median_seconds(runs, repeats)
    return {"flops": flops, "seconds": seconds}


def row(*cells: Any) -> str:
    """A markdown table row: numbers >= 10 without decimals, smaller ones with two."""
    text = [f"{c:.{0 if c >= 10 else 2}f}" if isinstance(c, float) else str(c) for c in cells]
    return f"| {' | '.join(text)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "model_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()

    seconds, train = train_step_times(args.repeats)
    ms = {name: t * 1e3 for name, t in seconds.items()}
    compiled = ms.get("torch.compile", train.get("torch.compile"))
    lines = [
        f"UNet training step (fp32, AdamW, batch {BATCH} of 32x32x4 latents, context "
        f"[{BATCH}, {TOKENS}, {TRAIN_UNET['cross_attention_dim']}]), {os.cpu_count()} threads",
        "",
        "| XLA options | jaxdiff ms | torch eager ms | torch.compile ms | eager / jaxdiff "
        "| compile / jaxdiff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in XLA_OPTIONS:
        jax_ms, eager = ms[f"jaxdiff, {name}"], ms["torch eager"]
        ratio = compiled / jax_ms if isinstance(compiled, float) else "-"
        lines.append(row(name, jax_ms, eager, compiled, eager / jax_ms, ratio))
    lines += [
        "",
        f"First-step loss: torch {train['first loss']['torch eager']:.7f}, max |jaxdiff - torch| "
        f"{train['first loss max |jaxdiff - torch|']:.1e}. torch.compile's first step "
        f"(compilation): {train.get('torch.compile first step (s)', float('nan')):.0f} s.",
        "",
        f"SD-1.5 UNet forward (fp32, batch 1, 32x32x4 latent, random weights), {MATMUL}^3 matmul",
        "",
        "| XLA options | UNet GFLOP | UNet ms | UNet GFLOP/s | matmul GFLOP/s | UNet / matmul |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    sd = sd15_times(args.repeats)
    rate = {k: sd["flops"][k] / sd["seconds"][k] / 1e9 for k in sd["flops"]}
    for name in XLA_OPTIONS:
        unet, mm = f"unet, {name}", f"matmul, {name}"
        cells = sd["flops"][unet] / 1e9, sd["seconds"][unet] * 1e3, rate[unet], rate[mm]
        lines.append(row(name, *cells, rate[unet] / rate[mm]))
    lines += [
        "",
        f"torch eager, same SD-1.5 forward: {sd['seconds']['unet, torch eager'] * 1e3:.0f} ms.",
        f"Whole script: {time.perf_counter() - start:.0f} s.",
    ]
    print("\n".join(lines[-len(XLA_OPTIONS) - 3 :]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    raw = {"train seconds": seconds, "train": train, "sd15": sd, "GFLOP/s": rate}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
