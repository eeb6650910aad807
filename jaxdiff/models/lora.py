"""LoRA (Hu et al. 2021): low-rank adapters on the Linear and Conv layers of any jaxdiff model.

An adapted layer computes `W x + sum_a w_a * s_a * B_a (A_a x)` over its adapters a: `A` (down,
rank r) and `B` (up) are `nnx.LoRAParam`s, so `nnx.state(model, nnx.LoRAParam)` picks exactly
the adapter parameters for training; `s_a` (the file's alpha / rank) and `w_a` (the adapter's
weight, diffusers' `set_adapters` weight times a call's `lora_scale`) are `LoRAScale` variables:
traced state, so changing them does not recompile a jit-compiled function of the model.

On a Conv layer (LoCon) `A` is a convolution with the layer's own kernel size, strides and
padding and `B` a 1x1 convolution (a matmul over channels), as in peft and kohya's LoCon.

`fuse` adds the adapters into the layers' kernels (float32 arithmetic) and sets their weights to
0; the caller keeps `fused_state(model)` from before fusing to restore both bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BaseLayer = nnx.Linear | nnx.Conv


class LoRAScale(nnx.Variable):
    """A multiplier of an adapter's output: its alpha / rank or its weight. Not trained."""


class LoRA(nnx.Module):
    """One adapter on one layer.

    down: `[in, r]` (Linear) or `[kh, kw, in, r]` (Conv); up: `[r, out]`; scale: the file's
    alpha / rank; dropout: the rate at which training drops the adapter's input (peft's
    `lora_dropout`; see `dropout_keys`). The adapter's weight starts at 1.
    """

    def __init__(self, down: jax.Array, up: jax.Array, scale: float, dropout: float = 0.0):
        self.down = nnx.LoRAParam(down)
        self.up = nnx.LoRAParam(up)
        self.scale = LoRAScale(jnp.asarray(scale, jnp.float32))
        self.weight = LoRAScale(jnp.asarray(1.0, jnp.float32))
        self.dropout = float(dropout)  # the rate its input is dropped at within `dropout_keys`

    def delta(self) -> jax.Array:
        """`B A` in the base kernel's layout, float32: `[in, out]` or `[kh, kw, in, out]`."""
        down = jnp.asarray(self.down.get_value(), jnp.float32)
        up = jnp.asarray(self.up.get_value(), jnp.float32)
        return jnp.einsum("...r,ro->...o", down, up)


class LoRALayer(nnx.Module):
    """A Linear or Conv layer (`base_layer`, unchanged) with LoRA adapters by name."""

    def __init__(self, base_layer: BaseLayer):
        self.base_layer = base_layer
        self.adapters = nnx.Dict()

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, ..., in] (Linear) or [B, H, W, in] (Conv) -> the base layer's output shape."""
        y = self.base_layer(x)
        dtype = self.base_layer.dtype or x.dtype
        x = x.astype(dtype)
        for adapter in self.adapters.values():
            down = adapter.down.get_value().astype(dtype)
            dropped = _dropped(x, adapter.dropout)
            if isinstance(self.base_layer, nnx.Conv):
                h = jax.lax.conv_general_dilated(
                    dropped,
                    down,
                    window_strides=_pair(self.base_layer.strides),
                    padding=self.base_layer.padding,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )  # [B, H', W', r]
            else:
                h = dropped @ down  # [B, ..., r]
            multiplier = (adapter.scale.get_value() * adapter.weight.get_value()).astype(dtype)
            y = y + multiplier * (h @ adapter.up.get_value().astype(dtype))
        return y


@dataclasses.dataclass
class _DropoutStreams:
    keys: jax.Array  # [B], one per example
    calls: int = 0  # adapter calls so far: each draws from its own stream


_DROPOUT: contextvars.ContextVar[_DropoutStreams | None] = contextvars.ContextVar(
    "lora_dropout", default=None
)


@contextlib.contextmanager
def dropout_keys(keys: jax.Array) -> Iterator[None]:
    """Within this block (around a training loss), adapters with a dropout rate drop their
    input: row b's mask comes from `keys[b]` ([B], one key per example) folded with the number
    of adapter calls before it, so a row's masks depend on its key alone, not on the rows beside
    it. Outside, adapters drop nothing (sampling)."""
    token = _DROPOUT.set(_DropoutStreams(keys))
    try:
        yield
    finally:
        _DROPOUT.reset(token)


def _dropped(x: jax.Array, rate: float) -> jax.Array:
    """x [B, ...] with each entry zeroed at `rate` and the rest scaled by 1 / (1 - rate) inside
    `dropout_keys`; x itself otherwise."""
    streams = _DROPOUT.get()
    if rate == 0 or streams is None:
        return x
    if x.shape[0] != streams.keys.shape[0]:
        raise ValueError(
            f"LoRA dropout on {x.shape[0]} rows with {streams.keys.shape[0]} keys; accepted: "
            "one key per row"
        )
    call = streams.calls
    streams.calls += 1

    def keep(key: jax.Array) -> jax.Array:
        return jax.random.bernoulli(jax.random.fold_in(key, call), 1.0 - rate, x.shape[1:])

    return jnp.where(jax.vmap(keep)(streams.keys), x / (1.0 - rate), 0).astype(x.dtype)


def _pair(strides: int | tuple[int, ...] | None) -> tuple[int, int]:
    if strides is None:
        return (1, 1)
    return (strides, strides) if isinstance(strides, int) else tuple(strides)


def layer_paths(model: nnx.Module) -> dict[str, BaseLayer]:
    """Every Linear and Conv layer of `model` by dotted module path, seen through adapters (an
    adapted layer's path is that of the layer it wraps)."""
    layers = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, BaseLayer):
            names = [str(p) for p in path]
            if names and names[-1] == "base_layer":
                names.pop()
            layers[".".join(names)] = node
    return layers


def adapted_layers(model: nnx.Module) -> Iterator[tuple[str, LoRALayer]]:
    """(dotted module path, layer) of every adapted layer of `model`."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, LoRALayer):
            yield ".".join(str(p) for p in path), node


def adapter_names(model: nnx.Module) -> set[str]:
    """The names of the adapters on `model`'s layers."""
    return {name for name, _ in _adapters(model)}


def _adapters(model: nnx.Module) -> Iterator[tuple[str, LoRA]]:
    for _, layer in adapted_layers(model):
        yield from layer.adapters.items()


def _child(parent: nnx.Module, attribute: str) -> nnx.Module:
    return parent[int(attribute)] if isinstance(parent, nnx.List) else getattr(parent, attribute)


def _replace(model: nnx.Module, path: str, make: Callable[[nnx.Module], nnx.Module]) -> None:
    """Puts `make(layer)` in the place of the layer at dotted `path` of `model`."""
    *parents, attribute = path.split(".")
    parent = model
    for part in parents:
        parent = _child(parent, part)
    new = make(_child(parent, attribute))
    if isinstance(parent, nnx.List):
        parent[int(attribute)] = new
    else:
        setattr(parent, attribute, new)


def add_adapter(
    model: nnx.Module,
    path: str,
    name: str,
    down: np.ndarray | jax.Array,
    up: np.ndarray | jax.Array,
    scale: float,
    dropout: float = 0.0,
) -> None:
    """Adds adapter `name` (`down`, `up` in `LoRA`'s layout, `scale`, `dropout`) to the Linear
    or Conv layer at dotted `path` of `model` (from `layer_paths`), wrapping it in a `LoRALayer`
    first if needed."""

    def adapted(layer: nnx.Module) -> LoRALayer:
        layer = layer if isinstance(layer, LoRALayer) else LoRALayer(layer)
        dtype = layer.base_layer.kernel.get_value().dtype
        layer.adapters[name] = LoRA(
            jnp.asarray(down, dtype), jnp.asarray(up, dtype), scale, dropout
        )
        return layer

    _replace(model, path, adapted)


def new_adapter(
    layer: BaseLayer, rank: int, scale: float, key: jax.Array
) -> tuple[jax.Array, jax.Array, float]:
    """A fresh adapter of `rank` for `layer`, as peft starts one: `down` uniform in
    +-1/sqrt(fan_in) (Kaiming-uniform with a = sqrt(5)), `up` zero, so the layer's output is
    unchanged until `up` is trained. Returns (down, up, scale) for `add_adapter`."""
    kernel = layer.kernel.get_value()  # [in, out] or [kh, kw, in, out]
    fan_in = math.prod(kernel.shape[:-1])
    bound = 1 / math.sqrt(fan_in)
    down = jax.random.uniform(key, (*kernel.shape[:-1], rank), jnp.float32, -bound, bound)
    return down, jnp.zeros((rank, kernel.shape[-1]), jnp.float32), scale


def copy_adapters(source: nnx.Module, target: nnx.Module) -> None:
    """Wraps each layer of `target` (a model of `source`'s architecture without adapters) that
    is adapted in `source` the same way, sharing `source`'s adapters: the two models' states then
    have the same paths."""
    for path, adapted in list(adapted_layers(source)):

        def share(layer: nnx.Module, adapted: LoRALayer = adapted) -> LoRALayer:
            wrapped = LoRALayer(layer)
            wrapped.adapters = adapted.adapters
            return wrapped

        _replace(target, path, share)


def set_weights(model: nnx.Module, weights: dict[str, float]) -> None:
    """Sets each adapter's weight: `weights[name]`, 0 for adapters not named."""
    for name, adapter in _adapters(model):
        adapter.weight.set_value(jnp.asarray(weights.get(name, 0.0), jnp.float32))


def scale_weights(model: nnx.Module, factor: jax.Array) -> None:
    """Multiplies every adapter's weight by `factor` (a call's `lora_scale`; traced)."""
    for _, adapter in _adapters(model):
        adapter.weight.set_value(adapter.weight.get_value() * factor)


def fused_state(model: nnx.Module) -> nnx.State:
    """What `fuse` changes (the adapted layers' kernels and the adapters' weights), to restore
    with `nnx.update(model, state)`."""
    return nnx.state(
        model,
        nnx.Any(
            LoRAScale,
            nnx.All(nnx.PathContains("base_layer"), nnx.PathContains("kernel"), nnx.Param),
        ),
    )


def fuse(model: nnx.Module, factor: float) -> None:
    """Adds `factor * sum_a w_a s_a B_a A_a` into each adapted layer's kernel (in float32, cast
    back to the kernel's dtype) and sets every adapter's weight to 0."""
    for _, layer in adapted_layers(model):
        kernel = layer.base_layer.kernel
        total = jnp.asarray(kernel.get_value(), jnp.float32)
        for adapter in layer.adapters.values():
            multiplier = factor * adapter.scale.get_value() * adapter.weight.get_value()
            total = total + multiplier * adapter.delta()
            adapter.weight.set_value(jnp.zeros((), jnp.float32))
        kernel.set_value(total.astype(kernel.get_value().dtype))


def remove_adapters(model: nnx.Module) -> None:
    """Puts every adapted layer's base layer back in its place, dropping the adapters."""
    for path in layer_paths(model):
        _replace(model, path, lambda layer: getattr(layer, "base_layer", layer))
