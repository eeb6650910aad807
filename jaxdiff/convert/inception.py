"""PyTorch InceptionV3 weight files -> jaxdiff's `InceptionV3` (the FID / KID feature extractor).

Reads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (variant "fid", Seitzer's port of the
TensorFlow graph of Heusel et al. 2017) or torchvision's `inception_v3_google-0cc3c7bd.pth`
(variant "torchvision"), as a torch state dict, or a .safetensors file with the same keys
(read without torch). The module tree mirrors torchvision's `Inception3` (Szegedy et al. 2016),
so the table is: conv `weight` -> `kernel` (OIHW -> HWIO), bn `weight` / `bias` -> `scale` /
`bias`, bn `running_mean` / `running_var` -> the `mean` / `var` statistics, fc `weight` ->
`kernel` ([out, in] -> [in, out]). `num_batches_tracked` and the training-only `AuxLogits.*` are
skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxdiff.convert.name_tables import Layout, NameTable, Rule, load_into
from jaxdiff.convert.safetensors_io import read_safetensors
from jaxdiff.convert.weight_files import read_torch_bin
from jaxdiff.errors import UserError
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.inception import VARIANTS, InceptionV3

_STATS = r".+\.running_(mean|var)"
"""Keys of the BatchNorm running statistics: `nnx.BatchStat`s, which `load_into` (parameters
only) leaves to `_load_statistics`."""

INCEPTION_TABLE = NameTable(
    rules=(
        Rule(r".+\.conv", "weight", "kernel", Layout.CONV),
        Rule(r".+\.bn", "weight", "scale"),
        Rule(r".+\.bn", "bias", "bias"),
        Rule(r".+\.bn", "running_mean", "mean"),
        Rule(r".+\.bn", "running_var", "var"),
        Rule(r"fc", "weight", "kernel", Layout.LINEAR),
        Rule(r"fc", "bias", "bias"),
    ),
    ignored=rf"AuxLogits\..+|.+\.num_batches_tracked|{_STATS}",
)
"""torchvision `Inception3` state-dict keys <-> `InceptionV3` paths."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a .pth / .pt / .bin torch state dict (`torch.load(weights_only=True)`, torch
    needed) or of a .safetensors file (numpy only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file; accepted: a .pth or .safetensors weight file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_bin(path)


def _load_statistics(tensors: Mapping[str, np.ndarray], model: nnx.Module, source: str) -> None:
    """Fills the BatchNorm running statistics of `model` through `INCEPTION_TABLE`, asserting each
    shape; a one-line UserError lists missing and unexpected statistics keys."""
    targets = {
        ".".join(str(p) for p in path): var
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    }
    filled, unexpected = set(), []
    for key in sorted(k for k in tensors if re.fullmatch(_STATS, k)):
        if key.startswith("AuxLogits."):
            continue
        mapped = INCEPTION_TABLE.to_module_path(key)
        if mapped is None or mapped[0] not in targets:
            unexpected.append(key)
            continue
        var = targets[mapped[0]]
        value = np.asarray(tensors[key])
        if value.shape != tuple(var.shape):
            raise UserError(
                f"{source}: {key} has shape {value.shape}, the model needs {tuple(var.shape)}"
            )
        var.set_value(jnp.asarray(value, var.dtype))
        filled.add(mapped[0])
    missing = sorted(INCEPTION_TABLE.to_reference_key(p)[0] for p in targets if p not in filled)
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys: {', '.join(missing[:8])}"] if missing else []
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {', '.join(unexpected[:8])}")
        raise UserError(f"{source} does not fit InceptionV3: {'; '.join(parts)}")


def inception_from_torch(
    path_or_state_dict: str | os.PathLike | Mapping[str, object],
    variant: str = "fid",
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
) -> InceptionV3:
    """An `InceptionV3` of `variant` ("fid" or "torchvision") with the weights of a torch state
    dict: a .pth / .safetensors file, or a mapping of names to arrays or torch tensors.

    Every shape is asserted and every parameter and running statistic filled exactly once; a
    missing, unexpected or misshapen key is a one-line UserError naming it.
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown InceptionV3 variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    if isinstance(path_or_state_dict, Mapping):
        source = "the state dict"
        tensors = {k: _to_numpy(v) for k, v in path_or_state_dict.items()}
    else:
        source = str(path_or_state_dict)
        tensors = read_state_dict(path_or_state_dict)
    model = eval_shape(
        lambda: InceptionV3(variant, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    )
    load_into(INCEPTION_TABLE, tensors, model, source)
    _load_statistics(tensors, model, source)
    return model


def _to_numpy(value: object) -> np.ndarray:
    """A numpy array of a state-dict value (a torch tensor is detached and moved to the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)
