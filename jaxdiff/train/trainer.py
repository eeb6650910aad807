"""The training loop: sharded state, checkpoints, automatic resume, preemption, logs, previews.

The mesh and the sharding rules come from the config (``jaxdiff.parallel``); the step is one
``jax.jit`` with in/out shardings and donated state. Randomness is a function of the step number
and the row in the batch (``jaxdiff.train.step``), data a function of the data position saved in
every checkpoint with the RNG key, so a run resumed from a checkpoint takes exactly the steps the
uninterrupted run would have taken. Ctrl-C or SIGTERM saves a checkpoint and ends the run cleanly.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxdiff import configuration, images, parallel
from jaxdiff.atomic_write import write_atomically
from jaxdiff.checkpoint import RUN_RECORD, Checkpointer
from jaxdiff.errors import UserError, require
from jaxdiff.pipelines.sample_png import display_scale
from jaxdiff.train.ema import make_ema_decay
from jaxdiff.train.optim import learning_rate_schedule, make_optimizer
from jaxdiff.train.state import StateLayout, as_targets, build_layout, initial_state, place
from jaxdiff.train.step import initial_health, make_train_step
from jaxdiff.train.stopping import StopRequests
from jaxdiff.train.tasks import ExportingTask, Task, make_task
from jaxdiff.workdir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ITEMS,
    checkpoint_folder,
    saved_config_dict,
)

Evaluate = Callable[[nnx.Module], dict[str, float]]  # model -> metrics
MakeEvaluator = Callable[[Task, ml_collections.ConfigDict, Path], Evaluate]
# Config groups and keys that may change between restarts.
RESUMABLE_GROUPS = ("train", "sample", "eval", "mesh", "sharding_rules")
RESUMABLE_KEYS = ("data.threads",)  # how the data is read, not what is read
# Top-level fields added to the configs after runs were saved without them, with the value that
# means what a saved run did: a saved config without one resumes with it at that value.
ADDED_FIELDS = {"pretrained_vae": ""}


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    progress: bool = True,
    make_evaluator: MakeEvaluator | None = None,
) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its newest readable checkpoint if any.

    ``progress`` shows a progress bar; ``make_evaluator(task, config, workdir)`` builds the
    periodic evaluation (``config.eval.every``), e.g. ``jaxdiff.evaluation.Evaluator``, once,
    before training. Ctrl-C or SIGTERM, from the start (compilation included), ends the run after
    the step in flight with a checkpoint (``jaxdiff.train.stopping``).

    Returns the last logged metrics (floats), with ``steps`` (the step reached), ``trained`` (the
    steps this call took: 0 when the workdir was already trained), ``seconds`` and ``signal``
    (the number of the signal that stopped the run, 0 when it ran to the end).
    """
    parallel.initialize_distributed()
    with StopRequests() as stop:
        return _train(config, Path(workdir), progress, make_evaluator, stop)


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    progress: bool,
    make_evaluator: MakeEvaluator | None,
    stop: StopRequests,
) -> dict:
    """`train`, with ``stop`` saying when a signal asks the run to end."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {str(workdir)!r} is a file; give a directory")
    task = make_task(config, workdir)  # validates the config before anything is written
    require(
        not config.eval.every or make_evaluator is not None,
        f"eval.every is {config.eval.every} but no evaluator was given; train with 'jaxdiff "
        "train' or pass make_evaluator=jaxdiff.evaluation.Evaluator",
    )
    train_config = config.train
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.check_rules(config.sharding_rules)
    parallel.check_batch(train_config.batch_size, mesh, train_config.micro_batches)
    _check_workdir_config(workdir, config)
    is_main = jax.process_index() == 0
    optimizer = make_optimizer(train_config)
    layout = build_layout(task, optimizer, mesh, rules)
    checkpointer = Checkpointer(
        workdir / CHECKPOINT_DIR,
        ITEMS,
        save_every=train_config.checkpoint_every,
        keep=train_config.keep_checkpoints,
    )
    init_key, root_key = jax.random.split(jax.random.key(config.seed))
    steps = train_config.steps
    if checkpointer.latest_step() is None:
        start, position, nonfinite = 0, 0, 0
        state, _ = initial_state(task, optimizer, layout, init_key)  # EMA: after initialize
        model, opt = nnx.merge(layout.graphdef, state)
        task.initialize(model, workdir)
        state = place(nnx.state((model, opt)), layout.shardings)
        ema = jax.tree.map(jnp.copy, place(nnx.state(model, task.trainable), layout.ema_shardings))
        del model, opt  # the step donates these buffers: only `state` is live from here on
    else:
        start, state, ema, saved = _restore(checkpointer, layout)
        if start > steps:
            raise UserError(
                f"workdir {str(workdir)!r} has a checkpoint at step {start}, past "
                f"train.steps={steps}"
            )
        if start == steps:
            checkpointer.close()
            if isinstance(task, ExportingTask):  # in case a crash cut the last export short
                task.export(_ema_model(layout.graphdef, state, ema, mesh), workdir)
            return _result(_last_logged(workdir), start, 0, 0.0, 0)
        folder = checkpoint_folder(workdir, start)
        _say(f"resuming from step {start} of {steps} (checkpoint {folder})")
        root_key = jax.random.wrap_key_data(jnp.asarray(saved["root_key"], jnp.uint32))
        position, nonfinite = saved["data_position"], saved["nonfinite_steps"]
    model, _ = nnx.merge(layout.graphdef, state, copy=True)
    task.prepare(model, workdir)  # work that needs the weights, fresh or restored
    del model
    evaluate = make_evaluator(task, config, workdir) if config.eval.every else None
    if is_main:
        write_atomically(workdir / CONFIG_FILE, configuration.to_json(config))

    batch_sharding = parallel.batch_sharding(mesh)
    replicated = parallel.replicated(mesh)
    batch_size = train_config.batch_size
    rows = parallel.process_rows(batch_sharding, batch_size)
    step_fn = compile_step(task, layout, mesh, train_config)
    health = jax.device_put(initial_health(), replicated)
    health["nonfinite_steps"] = jax.device_put(jnp.int32(nonfinite), replicated)
    lr = learning_rate_schedule(train_config)
    logger = _Logger(workdir, enabled=is_main, resumed_at=start)
    bar = tqdm(
        total=steps,
        initial=start,
        disable=not (progress and is_main),
        desc=config.task,
        unit="step",
    )
    last: dict[str, Any] = {}
    done, stopped_by = start, 0
    started = time.perf_counter()
    logged_at, logged_step = started, start
    try:
        for step in range(start, steps):
            local = task.batch(position + rows)
            batch = parallel.shard_batch(local, batch_sharding, batch_size)
            state, ema, health, metrics = step_fn(
                state, ema, health, batch, root_key, jnp.int32(step)
            )
            position += batch_size
            done = step + 1
            bar.update(1)
            stopped_by = stop.requested(done)
            save = checkpointer.should_save(done) or done == steps or stopped_by > 0
            if save or done % train_config.log_every == 0:
                last, nonfinite = _check_health(metrics, health, done, train_config, checkpointer)
                now = time.perf_counter()
                last["learning_rate"] = float(lr(step))
                last["steps_per_second"] = (done - logged_step) / (now - logged_at)
                logged_at, logged_step = now, done
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                logger.scalars(done, last)
            if save:
                checkpointer.save(
                    done,
                    _trees(state, ema),
                    {
                        "data_position": position,
                        "root_key": np.asarray(jax.random.key_data(root_key)).tolist(),
                        "nonfinite_steps": nonfinite,
                    },
                )
            if stopped_by:
                break
            preview = _due(done, train_config.preview_every, steps)
            evaluation = _due(done, config.eval.every, steps)
            if preview or evaluation:  # one EMA copy of the model for both
                model = _ema_model(layout.graphdef, state, ema, mesh)
                if preview:
                    _preview(task, model, workdir, done)
                if evaluation:
                    logger.scalars(done, evaluate(model), kind="eval")
                del model
                logged_at = time.perf_counter()  # the step rate counts training alone
        checkpointer.wait()  # a SIGTERM during the last save cannot cut it short
        if done == steps and isinstance(task, ExportingTask):
            task.export(_ema_model(layout.graphdef, state, ema, mesh), workdir)
    finally:
        bar.close()
        checkpointer.close()
        logger.close()
    seconds = time.perf_counter() - started
    return _result(last, done, done - start, seconds, stopped_by)


def _result(
    last: dict[str, Any], step: int, trained: int, seconds: float, signal: int
) -> dict[str, Any]:
    """What `train` returns."""
    return {**last, "steps": step, "trained": trained, "seconds": seconds, "signal": signal}


def _say(message: str) -> None:
    """One line for the user, from process 0."""
    if jax.process_index() == 0:
        print(message, flush=True)


def compile_step(
    task: Task,
    layout: StateLayout,
    mesh: Mesh,
    train: ml_collections.ConfigDict,
    unroll_micro_batches: bool | None = None,
) -> Callable:
    """The jitted ``step(state, ema, health, batch, root_key, step)`` on ``mesh``: state and EMA
    in the layout's shardings and donated, the batch split over ``data`` x ``fsdp``, the models'
    activations laid out by the layout's rules (``parallel.activation_sharding``). Micro-batch
    loops are unrolled on CPU devices unless ``unroll_micro_batches`` says otherwise."""
    if unroll_micro_batches is None:
        unroll_micro_batches = mesh.devices.flat[0].platform == "cpu"
    batch_sharding = parallel.batch_sharding(mesh)
    replicated = parallel.replicated(mesh)
    step = make_train_step(
        layout.graphdef,
        task.loss,
        task.trainable,
        make_ema_decay(train),
        micro_batches=train.micro_batches,
        stop_on_nonfinite=train.on_nonfinite == "stop",
        batch_sharding=batch_sharding,
        unroll_micro_batches=unroll_micro_batches,
    )

    def laid_out_step(*args: Any) -> Any:
        with parallel.activation_sharding(mesh, layout.rules):  # placed as the step is traced
            return step(*args)

    return jax.jit(
        laid_out_step,
        in_shardings=(
            layout.shardings,
            layout.ema_shardings,
            replicated,
            batch_sharding,
            replicated,
            replicated,
        ),
        out_shardings=(layout.shardings, layout.ema_shardings, replicated, replicated),
        donate_argnums=(0, 1, 2),
    )


def _check_workdir_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """A workdir holds one run: resuming is refused when anything but the ``RESUMABLE_GROUPS``
    (steps, intervals, previews, evaluation, the mesh) and ``RESUMABLE_KEYS`` differs from the
    saved config."""
    if not (workdir / CONFIG_FILE).is_file():
        return
    saved = _without_added_defaults(saved_config_dict(workdir))
    current = _without_added_defaults(json.loads(configuration.to_json(config)))
    for group in sorted((set(saved) | set(current)) - set(RESUMABLE_GROUPS)):
        if _fixed(saved.get(group), group) != _fixed(current.get(group), group):
            raise UserError(
                f"workdir {str(workdir)!r} holds a run with a different '{group}' config; "
                "use a new workdir or the same config"
            )


def _without_added_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A config as a dict without the ``ADDED_FIELDS`` that hold their default."""
    return {k: v for k, v in config.items() if k not in ADDED_FIELDS or v != ADDED_FIELDS[k]}


def _fixed(settings: Any, group: str) -> Any:
    """A config group without its ``RESUMABLE_KEYS``."""
    if not isinstance(settings, dict):
        return settings
    return {k: v for k, v in settings.items() if f"{group}.{k}" not in RESUMABLE_KEYS}


def _trees(state: nnx.State, ema: nnx.State) -> dict[str, Any]:
    return {
        "model": nnx.to_pure_dict(state[0]),
        "optimizer": nnx.to_pure_dict(state[1]),
        "ema": nnx.to_pure_dict(ema),
    }


def _restore(checkpointer: Checkpointer, layout: StateLayout):
    """The newest readable checkpoint, restored straight into the layout's shardings."""
    state = as_targets(layout.abstract, layout.shardings)
    ema = as_targets(layout.abstract_ema, layout.ema_shardings)
    step, restored = checkpointer.restore_latest(_trees(state, ema), record=True)
    if step != checkpointer.latest_step():
        checkpointer.set_aside(after=step)  # the unreadable newer steps
    nnx.replace_by_pure_dict(state[0], restored["model"])
    nnx.replace_by_pure_dict(state[1], restored["optimizer"])
    nnx.replace_by_pure_dict(ema, restored["ema"])
    return step, state, ema, restored[RUN_RECORD]


def _check_health(metrics, health, done: int, train: ml_collections.ConfigDict, checkpointer):
    """The step's metrics as floats; stops the run at a non-finite step when so configured."""
    metrics, health = jax.device_get((metrics, health))
    nonfinite = int(health["nonfinite_steps"])
    first = int(health["first_nonfinite"])
    if train.on_nonfinite == "stop" and first >= 0:
        latest = checkpointer.latest_step()
        kept = (
            "no checkpoint was written" if latest is None else f"checkpoint step {latest} is kept"
        )
        raise UserError(
            f"training stopped: the loss, gradient or updated weights are not finite at step "
            f"{first + 1}; {kept}; set train.on_nonfinite=skip to skip such updates"
        )
    return {**{k: float(v) for k, v in metrics.items()}, "nonfinite_steps": nonfinite}, nonfinite


def _due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (``every`` steps, 0: never) runs after ``step``."""
    return bool(every) and (step % every == 0 or step == last)


def _ema_model(graphdef, state: nnx.State, ema: nnx.State, mesh) -> nnx.Module:
    """The model with its EMA weights, as new Variables (``state`` is left untouched); with
    several processes, whole on every device (the weights are spread over all of them)."""
    model, _ = nnx.merge(graphdef, state, copy=True)
    nnx.update(model, ema)
    if jax.process_count() > 1:
        replicate = jax.jit(lambda t: t, out_shardings=parallel.replicated(mesh))
        nnx.update(model, replicate(nnx.state(model)))
    return model


def _preview(task: Task, model: nnx.Module, workdir: Path, step: int) -> None:
    """Every process samples; process 0 writes, small images enlarged as ``jaxdiff sample``
    enlarges them."""
    picture, text = task.preview(model)
    if jax.process_index() == 0:
        path = workdir / "samples" / f"step_{step:07d}.png"
        scale = display_scale(task.config.data.image_size)
        images.save_png(path, picture, {**text, "model": str(workdir), "step": step}, scale)


def _logged_step(line: str) -> int | None:
    """The step of a metrics line, or None for a line cut short by a crash."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _last_logged(workdir: Path) -> dict[str, Any]:
    """The newest metrics in ``metrics.jsonl`` (those of a finished run started again)."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    logged = [line for line in lines if _logged_step(line) is not None]
    return {k: v for k, v in json.loads(logged[-1]).items() if k != "step"} if logged else {}


def _summary_writer() -> type:
    """tensorboardX's ``SummaryWriter``, imported without torch: tensorboardX imports torch, when
    it is installed, only to accept its tensors (the logs get Python floats), and that import
    costs a training process seconds of start-up."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _keep_lines(path: Path, resumed_at: int) -> None:
    """Rewrites a JSONL log to hold only its lines up to step ``resumed_at`` (later work was lost,
    and a line cut short by a crash is dropped)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        step = _logged_step(line)
        if step is not None and step <= resumed_at:
            kept.append(line)
    write_atomically(path, "".join(line + "\n" for line in kept))


_LOGS = {"train": "metrics.jsonl", "eval": "eval.jsonl"}  # kind of metrics -> its log file


class _Logger:
    """Metrics to ``metrics.jsonl``, evaluations to ``eval.jsonl``, both to TensorBoard event
    files (process 0 only).

    On resume, lines logged after the restored step (work lost in the interruption) and a last
    line cut short by a crash are dropped, so each file holds each step once. A file is made at
    its first line: a run that never evaluates has no ``eval.jsonl``.
    """

    def __init__(self, workdir: Path, enabled: bool, resumed_at: int):
        self.enabled = enabled
        if not enabled:
            return
        self.paths = {kind: workdir / name for kind, name in _LOGS.items()}
        for path in self.paths.values():
            _keep_lines(path, resumed_at)
        self.files: dict[str, TextIO] = {}
        self.writer = _summary_writer()(str(workdir / "tensorboard"), purge_step=resumed_at + 1)

    def scalars(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """One line of ``kind`` ("train" or "eval") metrics."""
        if not self.enabled:
            return
        if kind not in self.files:
            self.files[kind] = self.paths[kind].open("a")
        file = self.files[kind]
        file.write(json.dumps({"step": step, **metrics}) + "\n")
        file.flush()
        for name, value in metrics.items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            for file in self.files.values():
                file.close()
            self.writer.close()
