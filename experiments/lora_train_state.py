"""Train-state bytes of SD-1.5's UNet: full fine-tuning vs LoRA, total and per device under FSDP.

From the shapes of the abstract state (`nnx.eval_shape`, nothing allocated) and its shardings
over `fsdp` devices with the default rules, as the trainer lays it out: the weights, AdamW's two
moments of the trainable ones, and the EMA of the trainable ones. Full fine-tuning trains every
UNet parameter; LoRA trains adapters on the attention projections (`configs/sd15_lora.py`'s
targets) of the frozen UNet, whose weights are stored once.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/lora_train_state.py
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import numpy as np
import optax
from flax import nnx

from jaxdiff import parallel
from jaxdiff.configuration import load_config
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.unet import UNET_PRESETS, UNet
from jaxdiff.train.lora_task import add_adapters
from jaxdiff.train.state import per_device_bytes, total_bytes


def train_state(trainable: nnx.filterlib.Filter, rank: int = 0, alpha: float = 1.0) -> tuple:
    """(abstract weights + optimizer state, abstract EMA) of the SD-1.5 UNet, with LoRA
    adapters of `rank` on `configs/sd15_lora.py`'s targets when `rank` > 0."""
    targets = tuple(load_config("sd15_lora").lora.unet_targets)

    def create():
        unet = UNet(**UNET_PRESETS["sd15"], rngs=nnx.Rngs(0))
        if rank:
            add_adapters(unet, targets, rank, alpha, nnx.Rngs(1))
        return unet, nnx.Optimizer(unet, optax.adamw(1e-4), wrt=trainable)

    unet, optimizer = eval_shape(create)
    return nnx.state((unet, optimizer)), nnx.state(unet, trainable)


def measure(name: str, abstract: tuple, mesh) -> dict:
    rules = parallel.check_rules(parallel.FSDP_RULES)
    shardings = tuple(parallel.state_shardings(s, mesh, rules) for s in abstract)
    trained = sum(math.prod(a.shape) for a in jax.tree.leaves(abstract[1]))
    return {
        "run": name,
        "trained_parameters": trained,
        "total_GB": total_bytes(abstract) / 1e9,
        "per_device_GB": per_device_bytes(abstract, shardings) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="the fsdp axis")
    args = parser.parse_args()
    mesh = parallel.make_mesh({"fsdp": args.devices}, jax.devices()[: args.devices])
    rows = [measure("full fine-tuning", train_state(nnx.Param), mesh)]
    for rank in (4, 16, 64):
        rows.append(measure(f"LoRA rank {rank}", train_state(nnx.LoRAParam, rank, rank), mesh))
    full = rows[0]["total_GB"]
    for row in rows:
        row["total_over_full"] = row["total_GB"] / full
    print(json.dumps(rows, indent=1, default=lambda x: float(np.asarray(x))))


if __name__ == "__main__":
    main()
