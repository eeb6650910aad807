"""Image features for FID / KID / precision-recall, computed over every local device.

A `FeatureExtractor` runs any NNX module that maps images `[B, H, W, 3]` in [0, 1] to features
`[B, D]` (the FID InceptionV3, CLIP's image tower, or an encoder of one's own) as one jitted
program: the weights replicated on this process's devices, each batch padded to a fixed size (a
multiple of the device count: one compilation) and split over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import parallel
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
        if batch_size <= 0:
            raise UserError(f"feature batch size must be > 0, got {batch_size}")
        self.name = name
        self.mesh = parallel.local_mesh(devices)
        self.batch_size = parallel.whole_batches(batch_size, self.mesh)
        graphdef, state = nnx.split(module)
        self._state = parallel.local_replica(state, self.mesh)

        @jax.jit
        def apply(state: nnx.State, x: jax.Array) -> jax.Array:
            if x.dtype == jnp.uint8:  # images: to [0, 1] on the devices
                x = x.astype(jnp.float32) / 255.0
            return nnx.merge(graphdef, state)(x).astype(jnp.float32)

        self._apply = apply

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
            raise UserError(f"images must be [N, H, W, 3] with N > 0, got shape {images.shape}")
        if images.dtype != np.uint8:
            images = images.astype(np.float32, copy=False)  # in [0, 1]
        return self.rows(images)

    def rows(self, inputs: np.ndarray) -> np.ndarray:
        """The module's outputs `[N, D]` for any inputs `[N, ...]` (token ids, say; uint8 ones
        are taken for images and divided by 255), in batches split over the devices."""
        return parallel.map_batches(
            lambda x: self._apply(self._state, x), {"x": inputs}, self.mesh, self.batch_size
        )


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
