"""Reference config.json <-> jaxdiff constructor arguments.

A `ReferenceConfig` lists every option of a diffusers / transformers constructor with its default.
The options jaxdiff's model takes pass through under the same name; every other option must hold
its default (a one-line error names the option, its value and the accepted one), so a checkpoint
whose architecture jaxdiff does not implement is refused instead of silently computed wrongly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxdiff.errors import UserError


def _canonical(value: Any) -> Any:
    """A config value with JSON lists as tuples, so a config and a default compare equal."""
    if isinstance(value, list | tuple):
        return tuple(_canonical(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """A reference class's options.

    Args:
      class_name: diffusers' `_class_name` / transformers' `architectures[0]`.
      defaults: every option of the reference constructor and its default value.
      arguments: the options passed to jaxdiff's model under the same name.
      ignored: options that hold no architecture (transformers' generic config keys, ids the
        tokenizer owns); read and dropped.
      strict: whether an option outside `defaults` and `ignored` is an error (diffusers configs
        list exactly the constructor's options; transformers configs carry many generic keys).
    """

    class_name: str
    defaults: Mapping[str, Any]
    arguments: tuple[str, ...]
    ignored: tuple[str, ...] = ()
    strict: bool = True

    def to_arguments(self, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        """The jaxdiff constructor arguments of a reference config (defaults filled in)."""
        for key, value in config.items():
            if key.startswith("_") or key in self.ignored:
                continue
            if key not in self.defaults:
                if self.strict:
                    raise UserError(
                        f"{source}: {self.class_name} option {key}={value!r} is not supported; "
                        f"accepted: the options of {self.class_name}"
                    )
                continue
            if key not in self.arguments and _canonical(value) != _canonical(self.defaults[key]):
                raise UserError(
                    f"{source}: {self.class_name} option {key}={value!r} is not supported; "
                    f"accepted: {self.defaults[key]!r}"
                )
        return {key: _canonical(config.get(key, self.defaults[key])) for key in self.arguments}

    def to_config(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """A complete reference config (every option) for a model's arguments, JSON-ready."""

        def jsonable(value: Any) -> Any:
            return [jsonable(v) for v in value] if isinstance(value, list | tuple) else value

        merged = {**self.defaults, **{k: arguments[k] for k in self.arguments}}
        return {key: jsonable(value) for key, value in merged.items()}
