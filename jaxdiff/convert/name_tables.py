"""Explicit name tables between PyTorch reference state dicts and jaxdiff's NNX modules.

jaxdiff's modules have the same module tree and attribute names as diffusers' / transformers'
(`down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k`), so a table maps a parameter by
its module path (a regex, matched in full) and its leaf name (`weight` -> `kernel`, with the
layout change each needs). The same table reads a checkpoint into a module and writes a module
back out: every reference key maps to exactly one NNX parameter and back.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models.layers import Buffer


class Layout(enum.Enum):
    """How a reference tensor's layout becomes jaxdiff's, and back."""

    SAME = "same"
    LINEAR = "linear"  # torch Linear [out, in] <-> flax kernel [in, out]
    CONV = "conv"  # torch Conv2d [out, in, kh, kw] <-> flax kernel [kh, kw, in, out]

    def _permutation(self, ndim: int) -> tuple[int, ...]:
        """Axis order taking the reference tensor to jaxdiff's (identity when the rank differs:
        the shape check then reports the mismatch)."""
        if self is Layout.LINEAR and ndim == 2:
            return (1, 0)
        if self is Layout.CONV and ndim == 4:
            return (2, 3, 1, 0)
        return tuple(range(ndim))

    def to_jax(self, w: np.ndarray) -> np.ndarray:
        return w.transpose(self._permutation(w.ndim))

    def to_reference(self, w: np.ndarray) -> np.ndarray:
        return w.transpose(np.argsort(self._permutation(w.ndim)))

    def reference_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[i] for i in np.argsort(self._permutation(len(shape))))


@dataclasses.dataclass(frozen=True)
class Rule:
    """Parameters of the modules whose path fully matches `module`: reference leaf `source`
    (e.g. "weight") <-> NNX leaf `target` (e.g. "kernel"), with `layout`."""

    module: str
    source: str
    target: str
    layout: Layout = Layout.SAME


@dataclasses.dataclass(frozen=True)
class NameTable:
    """A model's rules (first match wins) and the reference's naming around the module tree.

    Args:
      rules: the parameter rules.
      prefix: prepended to every reference module path when writing, except those matching
        `unprefixed`; optional when reading (transformers' CLIP: "text_model.", which the hub's
        checkpoints have and transformers 5 leaves out for `CLIPTextModel`).
      unprefixed: regex of module paths the reference keeps at the top level.
      legacy: (old name regex, current name) renames of reference module paths accepted when
        reading (old diffusers VAE attention names); writing uses the current names.
      ignored: regex of reference keys that hold buffers, not parameters (skipped when reading).
    """

    rules: tuple[Rule, ...]
    prefix: str = ""
    unprefixed: str | None = None
    legacy: tuple[tuple[str, str], ...] = ()
    ignored: str | None = None

    def to_module_path(self, key: str) -> tuple[str, Rule] | None:
        """A reference key -> (NNX parameter path, rule), or None when no rule takes it."""
        module, _, leaf = key.rpartition(".")
        module = module.removeprefix(self.prefix)
        for old, new in self.legacy:
            module = re.sub(old, new, module)
        for rule in self.rules:
            if rule.source == leaf and re.fullmatch(rule.module, module):
                return f"{module}.{rule.target}", rule
        return None

    def to_reference_key(self, path: str) -> tuple[str, Rule]:
        """An NNX parameter path -> (reference key, rule)."""
        module, _, leaf = path.rpartition(".")
        for rule in self.rules:
            if rule.target == leaf and re.fullmatch(rule.module, module):
                unprefixed = self.unprefixed and re.fullmatch(self.unprefixed, module)
                return f"{'' if unprefixed else self.prefix}{module}.{rule.source}", rule
        raise AssertionError(f"no name-table rule writes the parameter {path}")

    def layer_module(self, path: str) -> tuple[str, Rule]:
        """A Linear / Conv layer's NNX module path -> (the reference module path, e.g.
        "down_blocks.0.attentions.0.proj_in", the rule of its kernel)."""
        key, rule = self.to_reference_key(f"{path}.kernel")
        return key.removesuffix(f".{rule.source}"), rule


def parameters(model: nnx.Module) -> dict[str, nnx.Variable]:
    """The model's parameters and fixed buffers by dotted path
    ("down_blocks.0.resnets.0.conv1.kernel")."""
    return {
        ".".join(str(p) for p in path): var
        for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, Buffer)))
    }


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def load_into(
    table: NameTable, tensors: Mapping[str, np.ndarray], model: nnx.Module, source: str
) -> None:
    """Fills every parameter of `model` (built abstractly) from a reference state dict.

    Each tensor is changed to jaxdiff's layout, its shape asserted against the parameter's and
    cast to the parameter's dtype. Raises a one-line UserError listing the reference keys no
    parameter takes and the parameters no key fills; `source` names the checkpoint in messages.
    """
    targets = parameters(model)
    filled: dict[str, str] = {}
    unexpected = []
    for key in sorted(tensors):
        if table.ignored and re.fullmatch(table.ignored, key):
            continue
        mapped = table.to_module_path(key)
        if mapped is None or mapped[0] not in targets:
            unexpected.append(key)
            continue
        path, rule = mapped
        if path in filled:
            raise UserError(f"{source}: {key} and {filled[path]} both fill parameter {path}")
        var = targets[path]
        value = rule.layout.to_jax(np.asarray(tensors[key]))
        if value.shape != tuple(var.shape):
            raise UserError(
                f"{source}: {key} has shape {tuple(tensors[key].shape)}, the config needs "
                f"{rule.layout.reference_shape(tuple(var.shape))}"
            )
        var.set_value(jnp.asarray(value, var.dtype))
        filled[path] = key
    missing = [table.to_reference_key(p)[0] for p in targets if p not in filled]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_listing(sorted(missing))}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
        raise UserError(f"{source} does not fit the config: {'; '.join(parts)}")


def state_dict(table: NameTable, model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters as a reference state dict: numpy views in the reference layout
    (no copies; a writer makes each contiguous in turn)."""
    out = {}
    for path, var in parameters(model).items():
        key, rule = table.to_reference_key(path)
        out[key] = rule.layout.to_reference(np.asarray(var.get_value()))
    return out
