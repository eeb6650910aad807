"""Image features for FID / KID / precision-recall, computed over every local device.

A `FeatureExtractor` runs any NNX module that maps images `[B, H, W, 3]` in [0, 1] to features
`[B, D]` (the FID InceptionV3, CLIP's image tower, or an encoder of one's own) as one jitted
program: the weights replicated, each batch split over the devices (padded to a multiple of
their count).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.errors import UserError


class FeatureExtractor:
    """``extractor(images)``: uint8 `[N, H, W, 3]` (or float in [0, 1]) -> float32 `[N, D]`."""

    def __init__(
        self,
        module: nnx.Module,
        name: str,
        *,
        batch_size: int = 64,
        devices: Sequence[jax.Device] | None = None,
    ):
        devices = list(devices or jax.local_devices())
        if batch_size <= 0:
            raise UserError(f"feature batch size must be > 0, got {batch_size}")
        self.name = name
        self.mesh = Mesh(np.asarray(devices), ("data",))
        # Whole batches per device: rounded up to a multiple of the device count.
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        graphdef, state = nnx.split(module)
        self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
        rows = NamedSharding(self.mesh, P("data"))
        self._rows = rows
        self._apply = jax.jit(
            lambda state, images: nnx.merge(graphdef, state)(images).astype(jnp.float32),
            in_shardings=(NamedSharding(self.mesh, P()), rows),
            out_shardings=rows,
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
            raise UserError(f"images must be [N, H, W, 3] with N > 0, got shape {images.shape}")
        return np.concatenate(
            [
                self._batch(images[i : i + self.batch_size])
                for i in range(0, len(images), self.batch_size)
            ]
        )

    def _batch(self, images: np.ndarray) -> np.ndarray:
        count = len(images)
        pixels = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
        padded = np.zeros((self.batch_size, *images.shape[1:]), np.float32)
        padded[:count] = pixels
        features = self._apply(self._state, jax.device_put(padded, self._rows))
        return np.asarray(features)[:count]


def inception(weights: str, variant: str = "fid", batch_size: int = 64) -> FeatureExtractor:
    """The FID InceptionV3 (pool3, 2048 features) with the weights of a pytorch-fid /
    torchvision file (`pt_inception-2015-12-05-6726825d.pth`), or its .safetensors copy."""
    from jaxdiff.convert.inception import inception_from_torch

    if not weights:
        raise UserError(
            "the InceptionV3 weights file is not set; give pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth (or torchvision's inception_v3_google-*.pth)"
        )
    return FeatureExtractor(
        inception_from_torch(weights, variant), f"inception-{variant}", batch_size=batch_size
    )
