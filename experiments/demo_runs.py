"""Training the demo's stages and the adapters measured on its model: a run that a Ctrl-C or
SIGTERM stops ends the experiment after its checkpoint, so nothing is measured on a model half
trained."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ml_collections

from jaxdiff.configuration import load_config
from jaxdiff.train.stopping import exit_code, stop_report
from jaxdiff.train.trainer import train
from jaxdiff.workdir import checkpoint_folder, require_trained


def train_or_exit(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Trains (or resumes) one run and returns the trainer's summary; exits the process, after
    saying where the checkpoint is, when a signal stopped it."""
    result = train(config, workdir)
    if result["signal"]:
        checkpoint = checkpoint_folder(workdir, result["steps"])
        print(stop_report(result["signal"], result["steps"], config.train.steps, checkpoint))
        sys.exit(exit_code(result["signal"]))
    return result


def train_on_demo(
    config_path: str, demo: Path, name: str, overrides: list[str]
) -> tuple[ml_collections.ConfigDict, dict]:
    """Trains (or resumes) the adapter config at ``config_path`` on ``demo/t2i`` (``make demo``'s
    model) in ``demo/name``; returns its config and a summary of the training: ``steps``, the
    steps trained by this call and their wall seconds (a rerun of a finished run trains none)."""
    base = demo / "t2i"
    require_trained(base, "the demo's text-to-image run (make demo)")
    config = load_config(config_path, [f"base_workdir={base}", *overrides])
    started = time.perf_counter()
    result = train_or_exit(config, demo / name)
    seconds = round(time.perf_counter() - started, 1)
    return config, {"steps": result["steps"], "trained": result["trained"], "seconds": seconds}
