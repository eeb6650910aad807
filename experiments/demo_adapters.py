"""Training an adapter (a ControlNet, a LoRA) on the demo's trained text-to-image model, for the
experiments that measure one."""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections

from jaxdiff.configuration import load_config
from jaxdiff.train.trainer import train
from jaxdiff.workdir import require_trained


def train_on_demo(
    config_path: str, demo: Path, name: str, overrides: list[str]
) -> tuple[ml_collections.ConfigDict, dict, float]:
    """Trains (or resumes) the adapter config at ``config_path`` on ``demo/t2i`` (``make demo``'s
    model) in ``demo/name``; returns its config, the trainer's summary and the training's wall
    seconds."""
    base = demo / "t2i"
    require_trained(base, "the demo's text-to-image run (make demo)")
    config = load_config(config_path, [f"base_workdir={base}", *overrides])
    started = time.perf_counter()
    summary = train(config, demo / name)
    return config, summary, time.perf_counter() - started
