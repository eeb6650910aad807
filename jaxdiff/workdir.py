"""What a run's workdir holds and how it is read back: the saved config, the checkpoints, and the
newest weights restored into a model.

A workdir holds ``config.json`` (the run's config), ``checkpoints/`` (orbax: the model, the
optimizer and the EMA weights, with the data position and RNG key) and what its task saves
beside them (tokenizer, frozen parts' architectures). The trainer writes it; sampling,
evaluation and tasks that build on another run read it through this module, and
``jaxdiff.train.tasks.load_task`` makes a workdir's task from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from jaxdiff import config_groups, configuration
from jaxdiff.checkpoint import Checkpointer, latest_step
from jaxdiff.errors import UserError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
ITEMS = ("model", "optimizer", "ema")  # the array items of every checkpoint


def checkpoint_folder(workdir: str | Path, step: int) -> Path:
    """The folder of ``workdir``'s checkpoint of ``step``."""
    return Path(workdir) / CHECKPOINT_DIR / str(step)


def checkpoint_step(workdir: str | Path) -> int | None:
    """The newest checkpoint step of ``workdir``, or None (no checkpoint, or no config)."""
    workdir = Path(workdir)
    if not (workdir / CONFIG_FILE).is_file():
        return None
    return latest_step(workdir / CHECKPOINT_DIR)


def require_trained(workdir: str | Path, what: str = "workdir") -> int:
    """The newest checkpoint step of ``workdir``; a one-line error if it has none (``what``
    names the setting that gave the folder)."""
    step = checkpoint_step(workdir)
    if step is None:
        raise UserError(
            f"{what} {str(workdir)!r} has no checkpoint; train one first with "
            f"'jaxdiff train --config CONFIG --workdir {workdir}'"
        )
    return step


def saved_config_dict(workdir: str | Path) -> dict[str, Any]:
    """The config a run saved in ``workdir`` (its JSON object), refused with one line when it is
    not a config or lacks a field that every config holds (``jaxdiff.config_groups``), as one
    written by an older jaxdiff may."""
    path = Path(workdir) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a jaxdiff config (not a JSON object); use a new workdir")
    missing = config_groups.missing_fields(saved)
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)} (written by an older jaxdiff); add them to the "
            "file or start a new run"
        )
    return saved


def saved_config(workdir: str | Path, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """The locked config of a trained ``workdir``, changed by ``overrides`` ("key=value")."""
    require_trained(workdir)
    config = configuration.from_dict(saved_config_dict(workdir))
    configuration.apply_overrides(config, list(overrides))
    return config


def restore_weights(
    model: nnx.Module, trainable: nnx.filterlib.Filter, workdir: str | Path, use_ema: bool = True
) -> int:
    """Sets ``model`` (built with the run's architecture) to the newest readable weights of
    ``workdir``: its EMA weights for the ``trainable`` parameters unless ``use_ema`` is False.
    Returns the step they were read from."""
    checkpointer = Checkpointer(Path(workdir) / CHECKPOINT_DIR, ITEMS, read_only=True)
    model_state = nnx.state(model)
    ema = nnx.state(model, trainable)
    try:
        step, restored = checkpointer.restore_latest(
            {"model": nnx.to_pure_dict(model_state), "ema": nnx.to_pure_dict(ema)}
        )
    finally:
        checkpointer.close()
    nnx.replace_by_pure_dict(model_state, restored["model"])
    nnx.update(model, model_state)
    if use_ema:
        nnx.replace_by_pure_dict(ema, restored["ema"])
        nnx.update(model, ema)
    return step
