"""What a training job supplies to the trainer, the capabilities some jobs add, and the registry
of jobs by config name.

Every task is a `Task`; one whose model makes images from prompts is also an `ImageTask`, which
sampling, previews and evaluation take (``isinstance(task, ImageTask)``). A trained workdir's task
is `load_task`'s, its weights `load_model`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import config_groups, images, samplers
from jaxdiff import workdir as workdir_files
from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError, check_choice, require
from jaxdiff.pipelines.base import Pipeline
from jaxdiff.pipelines.sample_png import sample_text
from jaxdiff.train.optim import LR_SCHEDULES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NONFINITE_POLICIES = ("stop", "skip")  # stop the run, or skip the update and count it


@runtime_checkable
class Task(Protocol):
    """A trainable job: its model, its data stream, its loss and a picture of its progress."""

    config: ml_collections.ConfigDict
    trainable: nnx.filterlib.Filter  # the parameters the optimizer and the EMA update

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def initialize(self, model: nnx.Module, workdir: Path) -> None:
        """Set-up of a fresh run (pretrained parts, files saved beside the checkpoints)."""

    def prepare(self, model: nnx.Module, workdir: Path) -> None:
        """Work that needs the weights, fresh or restored, before the first step."""

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at ``indices`` (positions in the data stream): a function of the indices
        alone, so a resumed run reads exactly what the uninterrupted one would have."""

    def loss(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Per-example losses [B] and metrics {name: [B]}; ``batch["key"]`` holds one PRNG key
        per example, the only source of randomness."""

    def preview(self, model: nnx.Module) -> tuple[np.ndarray, dict[str, Any]]:
        """A uint8 image grid showing the model's progress and the PNG text that describes it."""


@runtime_checkable
class ImageTask(Task, Protocol):
    """A task whose model makes images from prompts: a diffusion model on a captioned data set,
    sampled by a pipeline with the config's ``sample`` settings."""

    diffusion: Diffusion
    pixel_space: bool  # True: the denoiser works on pixels (no autoencoder)
    data: Any  # jaxdiff.data.pipeline.ImageTextDataset

    def text_ids(self, captions: list[str]) -> np.ndarray:
        """Token ids `[N, T]` of captions."""

    def pipeline(self, model: nnx.Module) -> Pipeline:
        """The pipeline that samples ``model``."""


@runtime_checkable
class ExportingTask(Task, Protocol):
    """A task whose run ends by writing files for other tools (a LoRA file) from its final
    weights."""

    def export(self, model: nnx.Module, workdir: Path) -> None:
        """Writes the files from ``model`` (the EMA weights of the last step); called in every
        process."""


def generator(task: ImageTask, model: nnx.Module, **sampling: Any):
    """``generate(prompts, seed, first_index=0)``: uint8 images `[N, S, S, 3]` at the data's
    size with the config's ``sample`` settings (``sampling``: pipeline arguments that replace
    them), image i the ``first_index + i``-th of ``seed`` (the pipelines' per-image keys)."""
    sample, size = task.config.sample, task.config.data.image_size
    settings = {
        "height": size,
        "width": size,
        "num_inference_steps": sample.steps,
        "guidance_scale": sample.guidance,
        "sampler": sample.sampler,
        **sampling,
    }
    pipeline = task.pipeline(model)

    def generate(prompts: list[str], seed: int, first_index: int = 0) -> np.ndarray:
        pictures = pipeline(prompts, seed=seed, first_index=first_index, **settings)
        return images.to_uint8(pictures, (0.0, 1.0))  # [N, S, S, 3]

    return generate


def image_preview(task: ImageTask, model: nnx.Module) -> tuple[np.ndarray, dict[str, Any]]:
    """A row of one image per preview prompt (seed 0) and the PNG text describing it, with the
    keys of ``jaxdiff sample``'s."""
    sample = task.config.sample
    prompts = list(sample.preview_prompts)
    text = sample_text(prompts, 0, sample.sampler, sample.steps, sample.guidance)
    return images.grid(generator(task, model)(prompts, 0), columns=len(prompts)), text


def validate_sample(config: ml_collections.ConfigDict) -> None:
    """Checks an image task's ``sample`` group."""
    sample = config.sample
    require(sample.steps > 0, f"sample.steps must be > 0, got {sample.steps}")
    require(sample.guidance >= 0, f"sample.guidance must be >= 0, got {sample.guidance}")
    samplers.get(sample.sampler)
    require(
        len(sample.preview_prompts) > 0 or not config.train.preview_every,
        "sample.preview_prompts is empty; give prompts or set train.preview_every=0",
    )


def make_task(config: ml_collections.ConfigDict, workdir: str | Path | None = None) -> Task:
    """The task named by ``config.task``, with the config validated."""
    from jaxdiff.train.controlnet_task import ControlNetTask, RunControlNetTask
    from jaxdiff.train.finetune_task import FinetuneTask
    from jaxdiff.train.lora_task import LoRATask, RunLoRATask
    from jaxdiff.train.text_to_image_task import TextToImageTask
    from jaxdiff.train.vae_task import VAETask

    tasks = {
        "vae": VAETask,
        "text_to_image": TextToImageTask,
        "finetune": FinetuneTask,
        "lora": _by_base(LoRATask, RunLoRATask),
        "controlnet": _by_base(ControlNetTask, RunControlNetTask),
    }
    check_choice("task", config.task, tuple(sorted(tasks)))
    validate_common(config)
    task = tasks[config.task](config, None if workdir is None else Path(workdir))
    if config_groups.metric_names(config.eval):
        require_image_task(task, "eval.metrics")
    return task


def _by_base(pretrained: type[Task], run: type[Task]) -> Callable[..., Task]:
    """A task that adapts a frozen model: ``run``'s for a trained jaxdiff run (the config has
    a ``base_workdir`` field), ``pretrained``'s for a Stable Diffusion model folder."""

    def make(config: ml_collections.ConfigDict, workdir: Path | None) -> Task:
        return (run if "base_workdir" in config else pretrained)(config, workdir)

    return make


def require_image_task(task: Task, what: str) -> ImageTask:
    """``task``, refused with one line (``what`` names the setting that needs images) unless its
    model makes images from prompts."""
    if not isinstance(task, ImageTask):
        raise UserError(f"{what}: a {task.config.task!r} model does not generate images")
    return task


def load_task(workdir: str | Path, overrides: list[str] = ()) -> Task:
    """The task of a trained ``workdir`` (its config, tokenizer, ...) without its weights; its
    config changed by ``overrides`` ("key=value")."""
    return make_task(workdir_files.saved_config(workdir, overrides), workdir=workdir)


def load_image_task(workdir: str | Path, overrides: list[str] = ()) -> ImageTask:
    """`load_task`, refused with one line unless the run's model makes images from prompts."""
    task = load_task(workdir, overrides)
    if not isinstance(task, ImageTask):
        raise UserError(
            f"workdir {str(workdir)!r} holds a {task.config.task!r} model, not a text-to-image one"
        )
    return task


def load_model(task: Task, workdir: str | Path, use_ema: bool = True) -> nnx.Module:
    """The model of ``task`` with the newest weights of ``workdir`` (EMA ones by default)."""
    return load_weights(task, workdir, use_ema)[1]


def load_weights(task: Task, workdir: str | Path, use_ema: bool = True) -> tuple[int, nnx.Module]:
    """`load_model`, with the checkpoint step its weights were read from (the newest readable
    one)."""
    model = task.build_model(nnx.Rngs(0))  # every weight is replaced by the checkpoint's
    return workdir_files.restore_weights(model, task.trainable, workdir, use_ema), model


def load_trained(workdir: str | Path, use_ema: bool = True) -> tuple[Task, nnx.Module]:
    """The task and the trained model of ``workdir`` (EMA weights unless ``use_ema`` is False)."""
    task = load_task(workdir)
    return task, load_model(task, workdir, use_ema)


def validate_common(config: ml_collections.ConfigDict) -> None:
    """Checks the fields every task shares; each message names the value and what is accepted."""
    config_groups.validate_evaluation(config.eval, config.data)
    train = config.train
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        require(train[name] > 0, f"train.{name} must be > 0, got {train[name]}")
    require(train.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {train.warmup_steps}")
    require(
        train.preview_every >= 0, f"train.preview_every must be >= 0, got {train.preview_every}"
    )
    require(train.learning_rate > 0, f"train.learning_rate must be > 0, got {train.learning_rate}")
    require(train.grad_clip > 0, f"train.grad_clip must be > 0, got {train.grad_clip}")
    require(0.0 <= train.ema_rate < 1.0, f"train.ema_rate must be in [0, 1), got {train.ema_rate}")
    require(
        0.0 <= train.final_lr_fraction <= 1.0,
        f"train.final_lr_fraction must be in [0, 1], got {train.final_lr_fraction}",
    )
    for name in ("ema_half_life_images", "ema_rampup"):
        require(train[name] >= 0, f"train.{name} must be >= 0, got {train[name]}")
    require(train.micro_batches > 0, f"train.micro_batches must be > 0, got {train.micro_batches}")
    check_choice("train.on_nonfinite", train.on_nonfinite, NONFINITE_POLICIES)
    check_choice("train.lr_schedule", train.lr_schedule, tuple(LR_SCHEDULES))
    check_choice("model.dtype", config.model.dtype, tuple(DTYPES))


def split_keys(keys: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """Per-example keys [B] into ``n`` independent per-example key arrays, [B] each."""
    return tuple(jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, n))(keys), 1, 0))
