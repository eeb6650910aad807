"""Checkpoints: an orbax ``CheckpointManager`` over named pytrees of arrays.

A checkpoint holds several items (for training: ``model``, ``optimizer``, ``ema``) so that a
reader takes only what it needs (sampling restores ``model`` and ``ema``). orbax writes each step
to a temporary folder and renames it when complete, so a crash never leaves a half-written latest
step behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdiff.errors import UserError, first_line


class Checkpointer:
    """Saves every ``save_every`` steps, keeps the newest ``keep``, restores any item subset."""

    def __init__(
        self, directory: str | Path, items: Sequence[str], save_every: int = 1, keep: int = 3
    ):
        self.directory = Path(directory).absolute()
        self.items = tuple(items)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, create=True
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=self.items, options=options
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is due for a checkpoint (every ``save_every`` steps)."""
        return self._manager.should_save(step)

    def save(self, step: int, trees: Mapping[str, Any], force: bool = False) -> bool:
        """Saves ``trees`` (one pytree per item) at ``step`` if due (or ``force``)."""
        args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in trees.items()})
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int, templates: Mapping[str, Any]) -> dict[str, Any]:
        """Restores the items named in ``templates`` (pytrees giving shapes, dtypes, shardings)."""
        abstract = {
            name: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
            for name, tree in templates.items()
        }
        args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in abstract.items()})
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, KeyError) as error:
            raise UserError(
                f"checkpoint step {step} in {self.directory} does not fit this model: "
                f"{first_line(error)}"
            ) from None
        return {name: restored[name] for name in templates}

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def latest_step(directory: str | Path) -> int | None:
    """The newest complete step under ``directory``, or None when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)
