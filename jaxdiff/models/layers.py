"""Building blocks shared by the UNet, the VAE and the text encoder.

Activations are NHWC (images) or [B, T, D] (tokens). Parameters use the flax layout (Linear kernel
[in, out], Conv kernel [kh, kw, in, out]); module attribute names follow diffusers / transformers
(`norm1`, `conv1`, `time_emb_proj`, ...), so loading their weights is a name table plus transposes.

Every parameter carries logical axis names (`nnx.with_partitioning`); a config maps each name in
`LOGICAL_AXES` to a mesh axis (or None) and `jaxdiff.parallel.state_shardings` turns a model state
into shardings. No parameter carries a name twice, and the output-side names {heads, mlp,
conv_out, vocab} never meet on one parameter, nor do the input-side names {embed, conv_in}: mapping
either group to one mesh axis (FSDP) and the rest to None gives valid specs for every model.

Activations name their axes too (`constrain`): the batch, a transformer's token positions
(`ACTIVATION_AXES`), and the attention heads and feed-forward width with the parameters' names.
Inside `activation_sharding` (the trainer's step: `jaxdiff.parallel.activation_sharding`) each
named activation is constrained to the sharding its names map to, so that tensor and sequence
parallelism over a `tensor` mesh axis are laid out as intended rather than as the compiler
guesses; outside it `constrain` returns its input.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError

LOGICAL_AXES: dict[str, str] = {
    "embed": "token feature width: transformer / text hidden size, time-embedding output",
    "heads": "attention projection width (heads x head_dim)",
    "mlp": "feed-forward hidden width, time-embedding hidden width",
    "vocab": "token vocabulary",
    "conv_in": "input channels of a convolution or per-pixel projection",
    "conv_out": "output channels of a convolution or per-pixel projection",
    "norm": "channels of a normalization scale / bias",
}
"""The logical axis names parameters carry. Spatial kernel axes, position-table rows and the text
projection's output are unnamed (None)."""

ACTIVATION_AXES: dict[str, str] = {
    "batch": "examples of a batch (split over the data-parallel mesh axes)",
    "seq": "token positions of a transformer's residual stream (sequence parallelism)",
}
"""The logical axis names only activations carry; they also carry "heads" and "mlp"."""

Axes = tuple[str | None, ...]
TOKENS: Axes = ("batch", "seq", None)  # the axes of a transformer's residual stream [B, N, D]
# sharding_of(axes, shape) -> the sharding of an activation whose axes carry the logical `axes`
ShardingOf = Callable[[Axes, tuple[int, ...]], jax.sharding.Sharding]
_ACTIVATION_SHARDING: contextvars.ContextVar[ShardingOf | None] = contextvars.ContextVar(
    "activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(sharding_of: ShardingOf) -> Iterator[None]:
    """Within it, `constrain` gives each named activation the sharding `sharding_of` picks.
    Constraints are placed when a function is traced: wrap the traced body, not the call."""
    token = _ACTIVATION_SHARDING.set(sharding_of)
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """`x` constrained to the sharding of its logical `axes` (one per dimension, None unnamed)
    inside `activation_sharding`; `x` itself outside."""
    sharding_of = _ACTIVATION_SHARDING.get()
    if sharding_of is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding_of(axes, x.shape))


def partitioned(init: nnx.Initializer, axes: Axes) -> nnx.Initializer:
    """Wraps `init` so the parameter it creates carries the logical axis names `axes`.

    Inside a mesh context (the trainer's `jax.set_mesh` + `nnx.logical_axis_rules`) flax creates the
    parameter already sharded; without a mesh it is created unsharded and still carries its names.
    """
    eager = nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty
    return nnx.with_partitioning(init, axes, eager_sharding=eager)


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool = True,
    zero_init: bool = False,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """`torch.nn.Linear` equivalent: kernel [in, out] named `axes`, bias [out] named `axes[1]`.
    `zero_init`: the kernel starts at zero (DiT's adaLN-Zero), else LeCun-normal."""
    kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(kernel_init, axes),
        bias_init=partitioned(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int | Sequence[tuple[int, int]] | None = None,
    zero_init: bool = False,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """`torch.nn.Conv2d` equivalent on NHWC input, kernel [kh, kw, in, out].

    `padding` is torch's symmetric int padding, or explicit ((top, bottom), (left, right)); the
    default `(kernel_size - 1) // 2` keeps the spatial size at stride 1. `zero_init`: the kernel
    starts at zero (a ControlNet's "zero convolutions"), else LeCun-normal.
    """
    if padding is None:
        padding = (kernel_size - 1) // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        strides=stride,
        padding=tuple(padding),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(
            nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal(),
            (None, None, "conv_in", "conv_out"),
        ),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs,
    )


def _norm_params(num_channels: int, param_dtype: DTypeLike) -> tuple[nnx.Param, nnx.Param]:
    scale = nnx.Param(
        partitioned(nnx.initializers.ones_init(), ("norm",))(None, (num_channels,), param_dtype)
    )
    bias = nnx.Param(
        partitioned(nnx.initializers.zeros_init(), ("norm",))(None, (num_channels,), param_dtype)
    )
    return scale, bias


class GroupNorm(nnx.Module):
    """`torch.nn.GroupNorm` (Wu & He 2018) over the last (channel) axis, computed in float32.

    Statistics are per example and per group over all positions and the group's channels, with the
    biased variance, as torch computes them.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
    ):
        if num_channels % num_groups:
            raise UserError(
                f"norm_num_groups={num_groups} does not divide a block's {num_channels} channels; "
                "accepted: a divisor of every entry of block_out_channels"
            )
        self.num_groups = num_groups
        self.eps = eps
        self.dtype = dtype
        self.scale, self.bias = _norm_params(num_channels, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, ..., C] -> [B, ..., C] in the compute dtype."""
        batch, channels = x.shape[0], x.shape[-1]
        groups = x.astype(jnp.float32).reshape(
            batch, -1, self.num_groups, channels // self.num_groups
        )
        mean = groups.mean(axis=(1, 3), keepdims=True)  # [B, 1, G, 1]
        var = jnp.square(groups - mean).mean(axis=(1, 3), keepdims=True)  # [B, 1, G, 1]
        y = ((groups - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Buffer(nnx.Variable):
    """A fixed tensor stored with a model, as a reference library stores a persistent buffer
    (SD3's position table): converted and checkpointed with the parameters, never trained."""


class RMSNorm(nnx.Module):
    """diffusers `RMSNorm` with a weight (Zhang & Sennrich 2019): `x / sqrt(mean(x^2) + eps) *
    scale` over the last axis, computed in float32."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = _norm_params(num_features, param_dtype)[0]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in the compute dtype."""
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
    """`torch.nn.LayerNorm` (Ba et al. 2016) over the last axis, computed in float32; without
    `scale` and `bias` parameters when not `elementwise_affine`."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        elementwise_affine: bool = True,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale, self.bias = (
            _norm_params(num_features, param_dtype) if elementwise_affine else (None, None)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in the compute dtype."""
        xf = x.astype(jnp.float32)
        mean = xf.mean(axis=-1, keepdims=True)
        var = jnp.square(xf - mean).mean(axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class ResnetBlock2D(nnx.Module):
    """diffusers `ResnetBlock2D` with `time_embedding_norm="default"` and `output_scale_factor=1`.

    GroupNorm -> SiLU -> conv3x3 (+ projected time embedding) -> GroupNorm -> SiLU -> conv3x3, plus
    the input (through a 1x1 `conv_shortcut` when the channel count changes); Ho et al. 2020.
    `temb_channels=None` gives the VAE's variant without a time embedding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        *,
        groups: int,
        eps: float,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.norm1 = GroupNorm(groups, in_channels, eps, **kw)
        self.conv1 = conv2d(in_channels, out_channels, 3, rngs=rngs, **kw)
        self.time_emb_proj = (
            dense(temb_channels, out_channels, ("embed", "conv_out"), rngs=rngs, **kw)
            if temb_channels is not None
            else None
        )
        self.norm2 = GroupNorm(groups, out_channels, eps, **kw)
        self.conv2 = conv2d(out_channels, out_channels, 3, rngs=rngs, **kw)
        self.conv_shortcut = (
            conv2d(in_channels, out_channels, 1, rngs=rngs, **kw)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        """x [B, H, W, Cin], temb [B, E] (or None) -> [B, H, W, Cout]."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))  # [B, H, W, Cout]
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nnx.Module):
    """diffusers `Downsample2D(use_conv=True)`: a stride-2 3x3 conv.

    `padding=1` pads one pixel on every side (the UNet); `padding=0` pads one pixel at the bottom
    and right only (the VAE encoder), as diffusers does with `F.pad(x, (0, 1, 0, 1))`.
    """

    def __init__(
        self,
        channels: int,
        padding: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        pad = ((1, 1), (1, 1)) if padding == 1 else ((0, 1), (0, 1))
        self.conv = conv2d(
            channels,
            channels,
            3,
            stride=2,
            padding=pad,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C] (H, W even: exactly half)."""
        return self.conv(x)


class Upsample2D(nnx.Module):
    """diffusers `Upsample2D(use_conv=True)`: nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(
        self,
        channels: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = conv2d(channels, channels, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> [B, 2H, 2W, C]."""
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(
            b, 2 * h, 2 * w, c
        )
        return self.conv(x)


def block_runner(remat: bool) -> Callable[..., Any]:
    """How a model calls one of its blocks, `run(block, *args)`: directly, or (`remat`) in a
    `jax.checkpoint` of a pure function of the block's state, so that its activations are
    recomputed in the backward pass instead of kept. (`nnx.remat` refuses a block holding
    variables that the enclosing gradient does not differentiate, such as a LoRA's frozen base.)"""
    return _rematerialized if remat else _called


def _called(block: nnx.Module, *args: Any) -> Any:
    return block(*args)


def _rematerialized(block: nnx.Module, *args: Any) -> Any:
    graphdef, state = nnx.split(block)
    return jax.checkpoint(lambda state, *args: nnx.merge(graphdef, state)(*args))(state, *args)


Architecture = tuple[tuple[str, object], ...]
"""A model's architecture arguments as hashable static data: ((name, value), ...)."""

_RUN_OPTIONS = ("self", "rngs", "dtype", "param_dtype", "remat", "__class__")


def architecture(arguments: dict[str, object]) -> Architecture:
    """The architecture arguments among a constructor's ``locals()``, lists frozen to tuples.

    Dtypes, rematerialization and the RNG are left out: they say how a model runs, not what it
    is. A model stores this as ``self.architecture``; ``Model(**dict(model.architecture),
    rngs=...)`` rebuilds it and the weight converters write it out as a diffusers / transformers
    config.
    """

    def freeze(value: object) -> object:
        return tuple(freeze(v) for v in value) if isinstance(value, list | tuple) else value

    return tuple((k, freeze(v)) for k, v in arguments.items() if k not in _RUN_OPTIONS)
