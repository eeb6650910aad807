"""InceptionV3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision")
as the feature extractor of FID (Heusel et al. 2017, TTUR) and KID, in Flax NNX on NHWC images.

Two variants with torchvision's module tree and attribute names (`Conv2d_1a_3x3`, `Mixed_5b`,
`branch1x1`, `conv`, `bn`, `fc`), so loading their weights is a name table plus transposes:

- ``"fid"``: the network of pytorch-fid (Seitzer, `pytorch_fid.inception.fid_inception_v3`), a
  port of the TensorFlow graph FID was defined with: 1008 classes, the average pools of the
  A / C / E blocks leave the padding out of the mean (`count_include_pad=False`) and the last E
  block max-pools.
- ``"torchvision"``: torchvision's `inception_v3` (1000 classes, standard blocks; the auxiliary
  classifier, used only in training, is left out).

`InceptionV3(images)` is pytorch-fid's `InceptionV3([3], resize_input=True,
normalize_input=True)`: bilinear resize to 299x299 without antialiasing (`F.interpolate(...,
mode="bilinear", align_corners=False)`), `2x - 1`, the network up to the global average pool ->
pool3 features [B, 2048]. `model.logits(features)` applies the classifier (Inception Score).
For the torchvision variant `2x - 1` is what torchvision's `transform_input` makes of
ImageNet-normalized [0, 1] images, so the logits are those of `inception_v3(weights=...)` too.

BatchNorm runs in inference mode only (eps 1e-3): fixed running statistics held as
`nnx.BatchStat` (non-trainable), `(x - mean) / sqrt(var + eps) * scale + bias` in float32.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.errors import UserError
from jaxdiff.models.layers import dense, partitioned

VARIANTS: dict[str, int] = {"fid": 1008, "torchvision": 1000}
"""The variants and their numbers of classes."""

IMAGE_SIZE = 299
"""The side images are resized to."""

FEATURES = 2048
"""The width of the pool3 features."""

_BN_EPS = 1e-3

Pool = Literal["avg", "avg_unpadded", "max"]
"""A block's pooling branch, 3x3 stride 1 padding 1: average over the window with the zero padding
counted (torchvision), average over the window's pixels inside the image (TensorFlow, pytorch-fid
`count_include_pad=False`), or maximum (pytorch-fid's last block)."""


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class BatchNorm2d(nnx.Module):
    """`torch.nn.BatchNorm2d` in eval mode (Ioffe & Szegedy 2015) over the last axis, in float32.

    `scale` / `bias` are parameters (torch's `weight` / `bias`); `mean` / `var` are the running
    statistics (`running_mean` / `running_var`), never updated.
    """

    def __init__(self, num_features: int, eps: float, *, dtype: DTypeLike, param_dtype: DTypeLike):
        self.eps = eps
        self.dtype = dtype

        def make(init: nnx.Initializer) -> jax.Array:
            return partitioned(init, ("norm",))(None, (num_features,), param_dtype)

        self.scale = nnx.Param(make(nnx.initializers.ones_init()))
        self.bias = nnx.Param(make(nnx.initializers.zeros_init()))
        self.mean = nnx.BatchStat(make(nnx.initializers.zeros_init()))
        self.var = nnx.BatchStat(make(nnx.initializers.ones_init()))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., C] -> [..., C] in the compute dtype."""
        f32 = jnp.float32
        multiplier = self.scale[...].astype(f32) * jax.lax.rsqrt(
            self.var[...].astype(f32) + self.eps
        )
        shift = self.bias[...].astype(f32) - self.mean[...].astype(f32) * multiplier
        return (x.astype(f32) * multiplier + shift).astype(self.dtype)


class BasicConv2d(nnx.Module):
    """torchvision `BasicConv2d`: `conv` (no bias) -> `bn` (eps 1e-3) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        pad_h, pad_w = _pair(padding)
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel_size=_pair(kernel_size),
            strides=stride,
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=partitioned(
                nnx.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")
            ),
            rngs=rngs,
        )
        self.bn = BatchNorm2d(out_channels, _BN_EPS, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, Cin] -> [B, H', W', Cout]."""
        return jax.nn.relu(self.bn(self.conv(x)))


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    """3x3 max pool; torch's floor mode, padding with -inf. [B, H, W, C] -> [B, H', W', C]."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad
    ).astype(x.dtype)


def _pool_branch(x: jax.Array, pool: Pool) -> jax.Array:
    """The 3x3, stride 1, padding 1 pool of a block's pooling branch. [B, H, W, C] -> same."""
    if pool == "max":
        return _max_pool(x, 1, 1)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x.astype(jnp.float32), 0.0, jax.lax.add, window, strides, pad)
    if pool == "avg":
        count = 9.0
    else:  # "avg_unpadded": the number of window pixels inside the image
        ones = jnp.ones((1, *x.shape[1:3], 1), jnp.float32)
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return (total / count).astype(x.dtype)


class InceptionA(nnx.Module):
    """torchvision `InceptionA` (35x35 grid): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(
        self,
        in_channels: int,
        pool_features: int,
        pool: Pool,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 64, 1, rngs=rngs, **kw)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, rngs=rngs, **kw)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs, **kw)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, 35, 35, Cin] -> [B, 35, 35, 224 + pool_features]."""
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_pool_branch(x, self.pool))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """torchvision `InceptionB` (`Mixed_6a`): 35x35 -> 17x17 grid reduction."""

    def __init__(
        self, in_channels: int, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, rngs=rngs, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, 35, 35, 288] -> [B, 17, 17, 768]."""
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """torchvision `InceptionC` (17x17 grid): factorized 7x7 convolutions."""

    def __init__(
        self,
        in_channels: int,
        channels_7x7: int,
        pool: Pool,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        c7 = channels_7x7
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 192, 1, rngs=rngs, **kw)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs, **kw)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs, **kw)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs, **kw)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs, **kw)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs, **kw)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs, **kw)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs, **kw)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs, **kw)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, 17, 17, 768] -> [B, 17, 17, 768]."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            b7dbl = conv(b7dbl)
        bp = self.branch_pool(_pool_branch(x, self.pool))
        return jnp.concatenate([self.branch1x1(x), b7, b7dbl, bp], axis=-1)


class InceptionD(nnx.Module):
    """torchvision `InceptionD` (`Mixed_7a`): 17x17 -> 8x8 grid reduction."""

    def __init__(
        self, in_channels: int, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs, **kw)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs, **kw)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs, **kw)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs, **kw)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs, **kw)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, 17, 17, 768] -> [B, 8, 8, 1280]."""
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """torchvision `InceptionE` (8x8 grid): expanded filter banks of 1x3 and 3x1 convolutions."""

    def __init__(
        self,
        in_channels: int,
        pool: Pool,
        *,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1, rngs=rngs, **kw)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, rngs=rngs, **kw)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs, **kw)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, rngs=rngs, **kw)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs, **kw)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs, **kw)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs, **kw)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, 8, 8, Cin] -> [B, 8, 8, 2048]."""
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bp = self.branch_pool(_pool_branch(x, self.pool))
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(b3dbl),
                self.branch3x3dbl_3b(b3dbl),
                bp,
            ],
            axis=-1,
        )


class InceptionV3(nnx.Module):
    """InceptionV3 up to pool3, plus its classifier `fc` (see the module docstring).

    Args:
      variant: ``"fid"`` (pytorch-fid's FID network, 1008 classes) or ``"torchvision"``
        (torchvision's `inception_v3`, 1000 classes).
      dtype, param_dtype: compute and parameter dtypes (resizing and norms run in float32).
    """

    def __init__(
        self,
        variant: str = "fid",
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if variant not in VARIANTS:
            raise UserError(
                f"unknown InceptionV3 variant {variant!r}; accepted: {', '.join(VARIANTS)}"
            )
        self.variant = variant
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        fid = variant == "fid"
        avg: Pool = "avg_unpadded" if fid else "avg"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs, **kw)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs, **kw)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs, **kw)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs, **kw)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs, **kw)
        self.Mixed_5b = InceptionA(192, 32, avg, rngs=rngs, **kw)
        self.Mixed_5c = InceptionA(256, 64, avg, rngs=rngs, **kw)
        self.Mixed_5d = InceptionA(288, 64, avg, rngs=rngs, **kw)
        self.Mixed_6a = InceptionB(288, rngs=rngs, **kw)
        self.Mixed_6b = InceptionC(768, 128, avg, rngs=rngs, **kw)
        self.Mixed_6c = InceptionC(768, 160, avg, rngs=rngs, **kw)
        self.Mixed_6d = InceptionC(768, 160, avg, rngs=rngs, **kw)
        self.Mixed_6e = InceptionC(768, 192, avg, rngs=rngs, **kw)
        self.Mixed_7a = InceptionD(768, rngs=rngs, **kw)
        self.Mixed_7b = InceptionE(1280, avg, rngs=rngs, **kw)
        self.Mixed_7c = InceptionE(2048, "max" if fid else "avg", rngs=rngs, **kw)
        self.fc = dense(FEATURES, VARIANTS[variant], ("conv_in", "conv_out"), rngs=rngs, **kw)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, 3] in [0, 1] -> pool3 features [B, 2048] (float32)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(
                f"InceptionV3 takes images of shape [B, H, W, 3]; got {tuple(images.shape)}"
            )
        b = images.shape[0]
        x = jax.image.resize(
            images.astype(jnp.float32),
            (b, IMAGE_SIZE, IMAGE_SIZE, 3),
            "bilinear",
            antialias=False,  # = F.interpolate(bilinear, align_corners=False), up or down
        )  # [B, 299, 299, 3]
        x = (2 * x - 1).astype(self.dtype)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 147, 147, 64]
        x = _max_pool(x, 2)  # [B, 73, 73, 64]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 71, 71, 192]
        x = _max_pool(x, 2)  # [B, 35, 35, 192]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B, 35, 35, 288]
        x = self.Mixed_6a(x)  # [B, 17, 17, 768]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [B, 17, 17, 768]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B, 8, 8, 2048]
        return x.astype(jnp.float32).mean(axis=(1, 2))  # [B, 2048]

    def logits(self, features: jax.Array) -> jax.Array:
        """pool3 features [B, 2048] -> class logits [B, 1008 or 1000] (float32), torchvision's
        `fc` (dropout is the identity at inference)."""
        return self.fc(features.astype(self.dtype)).astype(jnp.float32)
