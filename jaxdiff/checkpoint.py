"""Checkpoints: an asynchronous orbax ``CheckpointManager`` over named pytrees and a JSON record.

A checkpoint holds several array items (for training: ``model``, ``optimizer``, ``ema``) so that a
reader takes only what it needs (sampling restores ``model`` and ``ema``), and one JSON item
(the run record: the data position, the RNG key, counters). Every process writes the shards its
devices hold. orbax writes each step into a temporary folder and renames it when complete, so a
crash, even a ``kill -9`` during a save, never leaves a half-written step under a step's name; the
temporary folders of interrupted saves are removed at the next start. A step that cannot be read
(a damaged disk, files lost in a copy) is skipped for the one before it, with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxdiff import parallel
from jaxdiff.errors import UserError, first_line

RUN_RECORD = "progress"  # the JSON item: data position, RNG key, counters (its name on disk)
# Replicated arrays are written by their replicas in parallel only in slices of at least this many
# bytes: smaller slices cost more (a compiled slice each) than they save.
MIN_REPLICA_SLICE_BYTES = 1 << 20

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves every ``save_every`` steps, keeps the newest ``keep``, restores any item subset.

    A ``read_only`` checkpointer (sampling, loading a trained part) leaves the folder untouched,
    also the temporary folders of a save another process is writing.
    """

    def __init__(
        self,
        directory: str | Path,
        items: Sequence[str],
        save_every: int = 1,
        keep: int = 3,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=save_every,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        registry = ocp.type_handlers.create_type_handler_registry(
            *_array_handlers(MIN_REPLICA_SLICE_BYTES)
        )
        handlers = {
            name: ocp.PyTreeCheckpointHandler(type_handler_registry=registry) for name in items
        }
        handlers[RUN_RECORD] = ocp.JsonCheckpointHandler()
        self._manager = ocp.CheckpointManager(
            self.directory, item_handlers=handlers, options=options
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is due for a checkpoint: every ``save_every`` steps, and the first
        step of a folder that has none."""
        return self._manager.should_save(step)

    def save(self, step: int, trees: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        """Starts saving ``trees`` (one pytree per array item) and the run ``record`` (JSON) at
        ``step``; the arrays are copied before this returns, the files are written in the
        background."""
        args = {k: ocp.args.PyTreeSave(v) for k, v in trees.items()}
        args[RUN_RECORD] = ocp.args.JsonSave(dict(record))
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(
        self, step: int, templates: Mapping[str, Any], record: bool = False
    ) -> dict[str, Any]:
        """Restores the items named in ``templates`` (pytrees of arrays or ``ShapeDtypeStruct``
        giving shapes, dtypes and the shardings to restore into), and the run record if
        ``record``. An array of another shape than its template's, or missing, is a one-line
        error naming it: the restored arrays are compared with their templates, and the saved
        ones, from their metadata, when orbax refuses a template (reading every array's metadata
        costs more than the restore itself, so it is read only then)."""
        abstract = {
            name: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
            for name, tree in templates.items()
        }
        args = {
            k: ocp.args.PyTreeRestore(
                v, restore_args=ocp.checkpoint_utils.construct_restore_args(v)
            )
            for k, v in abstract.items()
        }
        if record:
            args[RUN_RECORD] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception:
            self._check_shapes(step, templates, self._manager.item_metadata(step))
            raise
        self._check_shapes(step, templates, restored)
        return {name: restored[name] for name in args}

    def restore_latest(
        self, templates: Mapping[str, Any], record: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """The newest step that every process can read, and its items. A step that fails to read
        is passed over for the previous one with a warning naming both; if none can be read, the
        newest step's error is raised."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise UserError(f"{self.directory} holds no checkpoint")
        first_error: Exception | None = None
        for position, step in enumerate(steps):
            try:
                restored = self.restore(step, templates, record)
                error = None
            except UserError:
                raise
            except Exception as failure:  # any failure to read marks a bad step
                error = failure
            if parallel.everywhere(error is None):  # all processes resume from the same step
                return step, restored
            error = error or RuntimeError("another process could not read it")
            first_error = first_error or error
            if position + 1 < len(steps):
                log.warning(
                    "checkpoint step %d in %s cannot be read (%s); using step %d instead",
                    step,
                    self.directory,
                    first_line(error),
                    steps[position + 1],
                )
        raise UserError(
            f"no checkpoint in {self.directory} can be read; the newest (step {steps[0]}): "
            f"{first_line(first_error)}"
        )

    def set_aside(self, after: int) -> None:
        """Renames the steps newer than ``after`` (unreadable ones) to ``STEP.unreadable-TIME``,
        out of the way of the steps a resumed run writes again; process 0 renames, all wait."""
        if jax.process_index() == 0:
            for step in self._manager.all_steps():
                if step > after:
                    path = self.directory / str(step)
                    path.rename(path.with_name(f"{step}.unreadable-{time.time_ns()}"))
        multihost_utils.sync_global_devices("jaxdiff checkpoints set aside")
        self._manager.reload()

    def _check_shapes(
        self, step: int, templates: Mapping[str, Any], found: Mapping[str, Any]
    ) -> None:
        """A checkpoint of another model: a one-line error naming the first array of
        ``templates`` that ``found`` (the step's items: arrays or their metadata) lacks or holds
        in another shape."""
        for name, tree in templates.items():
            saved = found[name]
            if saved is None:
                raise ValueError(f"item {name!r} has no metadata")
            saved_leaves = {_names(p): leaf for p, leaf in _flatten(saved)}
            for path, leaf in _flatten(tree):
                where = "/".join((name, *_names(path)))
                if _names(path) not in saved_leaves:
                    raise UserError(
                        f"checkpoint step {step} in {self.directory} was written by a different "
                        f"model: it has no {where}"
                    )
                shape, want = _shape(saved_leaves[_names(path)]), _shape(leaf)
                if shape != want:
                    raise UserError(
                        f"checkpoint step {step} in {self.directory} was written by a different "
                        f"model: {where} has shape {shape}, this model {want}"
                    )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _array_handlers(min_slice_bytes: int) -> list[tuple[type, Any]]:
    """Handlers for the leaves of a train state, with replica-parallel writes of small arrays
    turned off."""
    scalar = ocp.type_handlers.ScalarHandler()
    array = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=min_slice_bytes)
    return [
        (int, scalar),
        (float, scalar),
        (np.number, scalar),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, array),
    ]


def _flatten(tree: Any) -> list[tuple[tuple, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]


def _shape(leaf: Any) -> tuple[int, ...]:
    """The shape of an array, of its metadata, or of a Python scalar (())."""
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def _names(path: tuple) -> tuple[str, ...]:
    """A tree path as strings: integer and string keys of the same name compare equal."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def latest_step(directory: str | Path) -> int | None:
    """The newest complete step under ``directory``, or None when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)
