"""LoRA adapters on a pipeline's networks, with diffusers' method names:

    pipe.load_lora_weights("pixel.safetensors", adapter_name="pixel")   # diffusers, peft, kohya
    pipe.load_lora_weights("toy_lora_dir", adapter_name="toy")
    pipe.set_adapters(["pixel", "toy"], adapter_weights=[1.0, 0.5])
    images = pipe("a cat", lora_scale=0.8)      # diffusers: cross_attention_kwargs={"scale": 0.8}
    pipe.fuse_lora(lora_scale=1.0)               # into the weights; unfuse_lora() undoes it
    pipe.save_lora_weights("out_dir", adapter_name="pixel")  # diffusers' format (or kohya)
    pipe.unload_lora_weights()

An unfused adapter a adds `lora_scale * w_a * s_a * B_a (A_a x)` to a layer's output: s_a is the
file's alpha / rank, w_a its `set_adapters` weight. Both weights and `lora_scale` are traced
values of the compiled loop: changing them does not recompile (loading, fusing and unloading
change the networks, and the next call compiles once). A load that fails leaves the pipeline as
it was.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.convert.lora_files import WEIGHT_NAME, read_lora
from jaxdiff.convert.lora_save import save_lora
from jaxdiff.errors import UserError, require
from jaxdiff.models import lora


class LoRAMixin:
    """The LoRA methods of a `Pipeline` whose `lora_components(networks)` names the networks
    adapters load into ({"unet": ..., "text_encoder": ...}); it comes before `Pipeline` among
    the bases."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._adapter_weights: dict[str, float] = {}  # set_adapters weights (0: off), load order
        self._unfused: nnx.State | None = None  # what `fuse_lora` changed, as it was before
        super().__init__(*args, **kwargs)

    def lora_components(self, networks: Any) -> dict[str, nnx.Module]:
        """{component name as LoRA files name it: its network} of the merged `networks`."""
        raise NotImplementedError

    def get_list_adapters(self) -> list[str]:
        """The loaded adapters' names, in load order."""
        return list(self._adapter_weights)

    def get_active_adapters(self) -> list[str]:
        """The adapters with a non-zero weight."""
        return [name for name, weight in self._adapter_weights.items() if weight != 0]

    def load_lora_weights(
        self,
        path_or_dir: str | Path,
        adapter_name: str | None = None,
        weight_name: str | None = None,
    ) -> None:
        """Loads a LoRA file (or the `pytorch_lora_weights.safetensors` of a folder, or its
        `weight_name`) as adapter `adapter_name` (default `default_<n>`); it becomes the active
        adapter, weight 1, alone (as in diffusers: `set_adapters` combines several)."""
        weights = self._adapter_weights
        name = f"default_{len(weights)}" if adapter_name is None else adapter_name
        require(
            isinstance(name, str) and name != "" and "." not in name,
            f"adapter_name={name!r}; accepted: a non-empty string without '.'",
        )
        require(
            name not in weights,
            f"adapter_name={name!r} is already loaded; accepted: a new name (loaded: "
            f"{', '.join(weights)})",
        )
        networks = self._networks()  # new module objects: the pipeline's stay as they are
        components = self.lora_components(networks)
        _, adapters = read_lora(path_or_dir, components, weight_name)
        for adapter in adapters:
            lora.add_adapter(
                components[adapter.component],
                adapter.path,
                name,
                adapter.down,
                adapter.up,
                adapter.scale,
            )
        new_weights = {**{other: 0.0 for other in weights}, name: 1.0}
        for model in components.values():
            lora.set_weights(model, new_weights)
        self._set_networks(networks)
        self._adapter_weights = new_weights

    def save_lora_weights(
        self,
        save_directory: str | Path,
        adapter_name: str | None = None,
        weight_name: str = WEIGHT_NAME,
        save_format: str = "peft",
    ) -> Path:
        """Writes adapter `adapter_name` (default: the only one loaded) to
        `save_directory/weight_name`: "peft" is the format diffusers' `load_lora_weights`
        reads, "kohya" A1111's and ComfyUI's. Returns the file's path."""
        loaded = self._adapter_weights
        if adapter_name is None:
            require(
                len(loaded) == 1,
                f"{len(loaded)} adapters are loaded ({', '.join(loaded) or 'none'}); accepted: "
                "adapter_name= one of them",
            )
            adapter_name = next(iter(loaded))
        self._check_names([adapter_name])
        require(self._unfused is None, "save_lora_weights on fused adapters: unfuse_lora first")
        components = self.lora_components(self._networks())
        return save_lora(Path(save_directory) / weight_name, components, adapter_name, save_format)

    def set_adapters(
        self,
        adapter_names: str | Sequence[str],
        adapter_weights: float | Sequence[float] | None = None,
    ) -> None:
        """Makes `adapter_names` the active adapters with `adapter_weights` (default 1 each; one
        number for all); the others are off. Traced: the compiled loop is reused."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None or isinstance(adapter_weights, int | float):
            values = [1.0 if adapter_weights is None else float(adapter_weights)] * len(names)
        else:
            values = [float(w) for w in adapter_weights]
        require(
            len(values) == len(names),
            f"{len(values)} adapter_weights for {len(names)} adapter_names; accepted: one each",
        )
        self._check_names(names)
        require(self._unfused is None, "set_adapters on fused adapters: call unfuse_lora first")
        new_weights = {name: 0.0 for name in self._adapter_weights}
        new_weights.update(zip(names, values, strict=True))
        self._update(lambda model: lora.set_weights(model, new_weights))
        self._adapter_weights = new_weights

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Adds the active adapters, times `lora_scale` and their weights, into the layers'
        weights (float32 arithmetic); the adapters then stay off until `unfuse_lora`."""
        require(self._unfused is None, "the adapters are fused already: call unfuse_lora first")
        require(self._adapter_weights, "fuse_lora: no LoRA is loaded (load_lora_weights first)")
        graphdef, state = nnx.split(self._networks())
        self._unfused = jax.tree.map(lambda leaf: leaf, lora.fused_state(self._networks()))
        self._set_networks(nnx.merge(graphdef, _fused(graphdef, state, jnp.float32(lora_scale))))

    def unfuse_lora(self) -> None:
        """Restores the weights `fuse_lora` changed, bit for bit, and the adapters' weights."""
        if self._unfused is None:
            return
        networks = self._networks()
        nnx.update(networks, self._unfused)
        self._set_networks(networks)
        self._unfused = None

    def unload_lora_weights(self) -> None:
        """Removes every adapter (fused ones stay in the weights, as in diffusers)."""
        networks = self._networks()
        for model in self.lora_components(networks).values():
            lora.remove_adapters(model)
        self._set_networks(networks)
        self._unfused = None
        self._adapter_weights = {}

    def _check_names(self, names: Sequence[str]) -> None:
        loaded = self._adapter_weights
        for name in names:
            if name not in loaded:
                raise UserError(f"unknown adapter {name!r}; loaded: {', '.join(loaded) or 'none'}")

    def _update(self, change: Any) -> None:
        networks = self._networks()
        for model in self.lora_components(networks).values():
            change(model)
        self._set_networks(networks)


@functools.partial(jax.jit, static_argnums=0)
def _fused(graphdef: nnx.GraphDef, state: nnx.State, factor: jax.Array) -> nnx.State:
    """The state of the networks with their adapters fused (`lora.fuse`), as one program."""
    networks = nnx.merge(graphdef, state)
    lora.fuse(networks, factor)
    return nnx.state(networks)
