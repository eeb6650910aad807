"""The training loop: checkpoints, automatic resume, logs, sample previews.

Randomness and data are functions of the step number (``fold_in(root_key, step)`` and the batch
of examples ``[step * B, (step + 1) * B)``), so a run resumed from a checkpoint takes exactly the
steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxdiff import configuration, images, parallel
from jaxdiff.checkpoint import Checkpointer, latest_step
from jaxdiff.errors import UserError
from jaxdiff.train.optim import learning_rate_schedule, make_optimizer
from jaxdiff.train.step import make_train_step
from jaxdiff.train.tasks import Task, make_task

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
ITEMS = ("model", "optimizer", "ema")


def train(config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if it has one.

    Returns the last logged metrics (floats), with ``steps`` and ``seconds``.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {str(workdir)!r} is a file; give a directory")
    task = make_task(config, workdir)  # validates the config before anything is written
    mesh = parallel.data_mesh(config.train.batch_size)
    _check_workdir_config(workdir, config)
    is_main = jax.process_index() == 0
    init_key, root_key = jax.random.split(jax.random.key(config.seed))

    model = task.build_model(nnx.Rngs(init_key))
    optimizer = nnx.Optimizer(model, make_optimizer(config.train), wrt=task.trainable)
    checkpointer = Checkpointer(
        workdir / CHECKPOINT_DIR,
        ITEMS,
        save_every=config.train.checkpoint_every,
        keep=config.train.keep_checkpoints,
    )
    start = checkpointer.latest_step() or 0
    steps = config.train.steps
    if start > steps:
        raise UserError(
            f"workdir {str(workdir)!r} has a checkpoint at step {start}, past train.steps={steps}"
        )
    if start == 0:
        task.initialize(model, workdir)
    graphdef, state = nnx.split((model, optimizer))
    ema = jax.tree.map(jnp.copy, nnx.state(model, task.trainable))
    del model, optimizer  # the step donates these buffers: only `state` is live from here on
    if start:
        state, ema = _restore(checkpointer, start, state, ema)
    if is_main:
        _write_atomically(workdir / CONFIG_FILE, configuration.to_json(config))

    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state, ema = jax.device_put((state, ema), replicated)
    step_fn = jax.jit(
        make_train_step(graphdef, task.loss, task.trainable, config.train.ema_rate),
        in_shardings=(replicated, replicated, batch_sharding, None),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )
    lr = learning_rate_schedule(config.train)
    logger = _Logger(workdir, enabled=is_main, resumed_at=start)
    bar = tqdm(
        total=steps,
        initial=start,
        disable=not (progress and is_main),
        desc=config.task,
        unit="step",
    )
    last: dict[str, Any] = logger.last()
    started = time.perf_counter()
    logged_at, logged_step = started, start
    try:
        for step in range(start, steps):
            batch = parallel.shard_batch(task.batch(step), batch_sharding)
            state, ema, metrics = step_fn(state, ema, batch, jax.random.fold_in(root_key, step))
            done = step + 1
            bar.update(1)
            save = checkpointer.should_save(done) or done == steps
            if save or done % config.train.log_every == 0:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not np.isfinite(last["loss"]):
                    raise UserError(
                        f"training diverged: loss is {last['loss']} at step {done}; the newest "
                        f"checkpoint (step {checkpointer.latest_step()}) is kept"
                    )
                now = time.perf_counter()
                last["learning_rate"] = float(lr(step))
                last["steps_per_second"] = (done - logged_step) / (now - logged_at)
                logged_at, logged_step = now, done
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                logger.scalars(done, last)
            if save:
                checkpointer.save(done, _trees(state, ema), force=True)
            preview_every = config.train.preview_every
            if is_main and preview_every and (done % preview_every == 0 or done == steps):
                _preview(task, graphdef, state, ema, workdir, done)
        checkpointer.wait()
    finally:
        bar.close()
        checkpointer.close()
        logger.close()
    return {**last, "steps": steps, "seconds": time.perf_counter() - started}


def load_trained(workdir: str | Path, use_ema: bool = True) -> tuple[Task, nnx.Module]:
    """The task and the trained model of ``workdir`` (EMA weights unless ``use_ema`` is False)."""
    task = load_task(workdir)
    return task, load_model(task, workdir, use_ema)


def load_task(workdir: str | Path) -> Task:
    """The task of a trained ``workdir`` (its config, tokenizer, ...) without its weights."""
    workdir = Path(workdir)
    config_path = workdir / CONFIG_FILE
    if not config_path.is_file() or latest_step(workdir / CHECKPOINT_DIR) is None:
        raise UserError(
            f"workdir {str(workdir)!r} has no checkpoint; train one first with "
            f"'jaxdiff train --config CONFIG --workdir {workdir}'"
        )
    return make_task(configuration.from_json(config_path.read_text()), workdir=workdir)


def load_model(task: Task, workdir: str | Path, use_ema: bool = True) -> nnx.Module:
    """The model of ``task`` with the newest weights of ``workdir`` (EMA ones by default)."""
    checkpointer = Checkpointer(Path(workdir) / CHECKPOINT_DIR, ITEMS)
    model = task.build_model(nnx.Rngs(0))  # every weight is replaced by the checkpoint's
    model_state = nnx.state(model)
    ema = nnx.state(model, task.trainable)
    restored = checkpointer.restore(
        checkpointer.latest_step(),
        {"model": nnx.to_pure_dict(model_state), "ema": nnx.to_pure_dict(ema)},
    )
    checkpointer.close()
    nnx.replace_by_pure_dict(model_state, restored["model"])
    nnx.update(model, model_state)
    if use_ema:
        nnx.replace_by_pure_dict(ema, restored["ema"])
        nnx.update(model, ema)
    return model


def _check_workdir_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """A workdir holds one run: resuming is refused when anything but the ``train`` and ``sample``
    settings (steps, intervals, previews) differs from the saved config."""
    path = workdir / CONFIG_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not a jaxdiff config (not JSON); use a new workdir") from None
    current = json.loads(configuration.to_json(config))
    for group in sorted((set(saved) | set(current)) - {"train", "sample"}):
        if saved.get(group) != current.get(group):
            raise UserError(
                f"workdir {str(workdir)!r} holds a run with a different '{group}' config; "
                "use a new workdir or the same config"
            )


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _trees(state: nnx.State, ema: nnx.State) -> dict[str, Any]:
    return {
        "model": nnx.to_pure_dict(state[0]),
        "optimizer": nnx.to_pure_dict(state[1]),
        "ema": nnx.to_pure_dict(ema),
    }


def _restore(checkpointer: Checkpointer, step: int, state: nnx.State, ema: nnx.State):
    restored = checkpointer.restore(step, _trees(state, ema))
    nnx.replace_by_pure_dict(state[0], restored["model"])
    nnx.replace_by_pure_dict(state[1], restored["optimizer"])
    nnx.replace_by_pure_dict(ema, restored["ema"])
    return state, ema


def _preview(task: Task, graphdef, state: nnx.State, ema: nnx.State, workdir: Path, step: int):
    model, _ = nnx.merge(graphdef, state, copy=True)  # new Variables: `state` is left untouched
    nnx.update(model, ema)
    picture, text = task.preview(model)
    images.save_png(workdir / "samples" / f"step_{step:07d}.png", picture, {**text, "step": step})


class _Logger:
    """Metrics to ``metrics.jsonl`` and TensorBoard event files (process 0 only).

    On resume, lines logged after the restored step (work lost in the interruption) are dropped,
    so the file holds each step once.
    """

    def __init__(self, workdir: Path, enabled: bool, resumed_at: int):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        path = workdir / "metrics.jsonl"
        kept = []
        if path.is_file():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resumed_at
            ]
            _write_atomically(path, "".join(line + "\n" for line in kept))
        self._last = json.loads(kept[-1]) if kept else {}
        self.jsonl = path.open("a")
        self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=resumed_at + 1)

    def last(self) -> dict[str, Any]:
        """The newest metrics already logged (those of a finished run that is started again)."""
        if not self.enabled:
            return {}
        return {k: v for k, v in self._last.items() if k != "step"}

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.writer.close()
