"""Class-conditional DiT (Peebles & Xie 2023) on converted diffusers weights: diffusers'
`DiTPipeline` on the shared loop, with every sampler of the zoo, img2img and inpainting.

    pipe = DiT.from_pretrained("facebook/DiT-XL-2-256")
    images = pipe([207, 360], num_inference_steps=25, sampler="dpmpp_2m", seed=33)
    images = pipe(["golden retriever", "otter"])   # the model's ImageNet label names

A call's "prompts" are class labels (ids, or names of `labels`); the unconditional branch of
classifier-free guidance sees the null class, or the classes of `negative_prompt`. Guidance acts
on the noise prediction; a learned-variance model's other half is dropped, as diffusers does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError, require
from jaxdiff.models.dit import DiT as DiTTransformer
from jaxdiff.models.vae import AutoencoderKL
from jaxdiff.pipelines import vae_latents
from jaxdiff.pipelines.base import Grid, Pipeline, Sampling
from jaxdiff.pipelines.scheduler_config import SchedulerConfig

COMPONENTS = ("transformer", "vae", "scheduler")


class DiT(Pipeline):
    """Images of classes (`__call__`, `img2img`, `inpaint`) from a DiT transformer and a VAE in
    diffusers' layout; defaults as diffusers' `DiTPipeline` with a DDIM scheduler (50 steps,
    guidance 4), the sigmas as the scheduler config's diffusers scheduler lays them out.
    `labels`: class name -> id, from the model's `id2label` (empty without one)."""

    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"num_inference_steps": 50, "guidance_scale": 4.0, "sampler": "ddim"}
    )

    def __init__(
        self,
        transformer: DiTTransformer,
        vae: AutoencoderKL,
        scheduler_config: dict[str, Any],
        id2label: Mapping[Any, str] | None = None,
        devices: Sequence[jax.Device] | None = None,
    ):
        if not isinstance(transformer, DiTTransformer):
            raise UserError(f"a {type(transformer).__name__} as a DiT's transformer; accepted: DiT")
        self.scheduler_config = dict(scheduler_config)
        self.scheduler = SchedulerConfig.from_dict(self.scheduler_config)
        self.num_classes = transformer.num_classes
        self.labels = _label_ids(id2label or {})
        self.vae_scale_factor = vae.downsample_factor
        architecture = dict(transformer.architecture)
        self.latent_channels = self.network_in_channels = architecture["in_channels"]
        self.default_size = architecture["sample_size"] * self.vae_scale_factor
        diffusion = Diffusion(self.scheduler.process, self.scheduler.parameterization)
        super().__init__((transformer, vae), diffusion, devices)

    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_hub_id: str | Path,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike | None = None,
        variant: str | None = None,
        devices: Sequence[jax.Device] | None = None,
    ) -> DiT:
        """A diffusers `DiTPipeline` folder (model_index.json, transformer/, vae/, scheduler/)
        or hub id such as "facebook/DiT-XL-2-256"; `dtype` is the networks' compute dtype,
        `param_dtype` that of their weights (default: `dtype`)."""
        from jaxdiff.convert.json_files import read_json_object
        from jaxdiff.convert.pipeline_components import (
            load_network,
            network_patterns,
            resolve_model_dir,
        )

        patterns = ["model_index.json", "scheduler/*"]
        for network in ("transformer", "vae"):
            patterns += network_patterns(network, variant)
        directory = resolve_model_dir(model_dir_or_hub_id, variant, patterns)
        missing = [name for name in COMPONENTS if not (directory / name).is_dir()]
        if not (directory / "model_index.json").is_file() or missing:
            raise UserError(
                f"{directory} is not a DiT model folder (it lacks "
                f"{', '.join(missing) or 'model_index.json'}); accepted: model_index.json, "
                "transformer/, vae/, scheduler/"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype or dtype, variant=variant)
        return cls(
            load_network(directory / "transformer", **kw),
            load_network(directory / "vae", **kw),
            read_json_object(directory / "scheduler" / "scheduler_config.json"),
            read_json_object(directory / "model_index.json").get("id2label"),
            devices=devices,
        )

    def __call__(
        self,
        class_labels: int | str | Sequence[int | str],
        negative_prompt: int | str | Sequence[int | str] | None = None,
        height: int | None = None,
        width: int | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """Images of `class_labels` (ids or names; one image each, times
        `num_images_per_prompt`), guided away from the null class or from the classes of
        `negative_prompt`; other arguments as `Pipeline.__call__`."""
        return super().__call__(class_labels, negative_prompt, height, width, **sampling)

    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Class ids of label names (diffusers' `DiTPipeline.get_label_ids`)."""
        names = [label] if isinstance(label, str) else list(label)
        return [int(i) for i in self.tokenize(names)[:, 0]]

    def prompt_ids(
        self, prompt: Any, negative_prompt: Any, extra: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class ids `[N, 1]` of the labels, and of the negative ones (the null class, id
        `num_classes`, when None)."""
        del extra
        labels = self._class_ids(prompt, "class_labels")
        if negative_prompt is None:
            return labels, np.full_like(labels, self.num_classes)
        negatives = self._class_ids(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = np.repeat(negatives, len(labels), axis=0)
        require(
            len(negatives) == len(labels),
            f"{len(negatives)} negative classes for {len(labels)} class labels; give one per "
            "label, one for all, or None (the null class)",
        )
        return labels, negatives

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        """Class ids `[N, 1]` of label names."""
        unknown = [name for name in prompts if name not in self.labels]
        if unknown and not self.labels:
            raise UserError(
                f"class label {unknown[0]!r}: this model names no classes (no id2label); "
                f"accepted: class ids in [0, {self.num_classes})"
            )
        if unknown:
            raise UserError(
                f"class label {unknown[0]!r} names none of this model's classes; accepted: "
                f"{', '.join(list(self.labels)[:5])}, ... (`labels`), or class ids"
            )
        return np.asarray([[self.labels[name]] for name in prompts], np.int32)

    def grid(self, sampling: Sampling) -> Grid:
        return self.scheduler.call_grid(sampling)

    @staticmethod
    def encode_prompts(networks: Any, ids: jax.Array, clip_skip: int = 0) -> jax.Array:
        """Class ids `[B, 1]` -> the transformer's labels `[B]` (no text encoder: `clip_skip` is
        0)."""
        del clip_skip
        return ids[:, 0]

    @staticmethod
    def predict(networks: Any, x_in: jax.Array, t: jax.Array, context: Any) -> jax.Array:
        """The transformer's noise prediction for the labels `context` `[B]` (the learned
        variance, if the model has one, dropped)."""
        return networks[0](x_in, t, context)[..., : x_in.shape[-1]]

    @staticmethod
    def encode_images(networks: Any, images: jax.Array, keys: jax.Array) -> jax.Array:
        return vae_latents.sample_latents(networks[1], images, keys)

    @staticmethod
    def decode_latents(networks: Any, latents: jax.Array) -> jax.Array:
        return vae_latents.decode_latents(networks[1], latents)

    def _class_ids(self, labels: Any, what: str) -> np.ndarray:
        """Class ids `[N, 1]` of one label or a non-empty sequence of them (ids or names)."""
        given = [labels] if isinstance(labels, str) or np.ndim(labels) == 0 else list(labels)
        require(len(given) > 0, f"no {what} given; pass a class id or name, or a list of them")
        ids = []
        for label in given:
            if isinstance(label, str):
                ids.append(int(self.tokenize([label])[0, 0]))
                continue
            integer = not isinstance(label, bool) and np.asarray(label).dtype.kind in "iu"
            require(
                integer and np.ndim(label) == 0 and 0 <= int(label) < self.num_classes,
                f"{what} {label!r}; accepted: class ids in [0, {self.num_classes}) or names",
            )
            ids.append(int(label))
        return np.asarray(ids, np.int32)[:, None]


def _label_ids(id2label: Mapping[Any, str]) -> dict[str, int]:
    """Each comma-separated name of `id2label` -> its id, sorted by name (as diffusers)."""
    labels = {
        name.strip(): int(key) for key, value in id2label.items() for name in value.split(",")
    }
    return dict(sorted(labels.items()))
