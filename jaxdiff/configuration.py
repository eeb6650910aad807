"""Config files and command-line overrides.

A config file defines ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``; it is
named on the command line as ``path/to/config.py`` or ``path/to/config.py:arg``. Overrides take the
form ``--config.train.steps=100``; each is parsed to the type of the value it replaces.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxdiff.errors import UserError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path[:arg]``, applies ``key=value`` overrides and returns the locked config."""
    path_text, _, arg = spec.partition(":")
    path = Path(path_text)
    if path.suffix != ".py" or not path.is_file():
        raise UserError(
            f"config file {path_text!r} not found; expected a path to a .py config file"
        )
    module_spec = importlib.util.spec_from_file_location(f"jaxdiff_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    # Config files import their siblings as a package (`from configs import common`).
    root = str(path.absolute().parent.parent)
    sys.path.insert(0, root)
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(root)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path_text!r} defines no get_config(arg=None)")
    config = module.get_config(arg or None)
    apply_overrides(config, overrides)
    config.lock()
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies ``dotted.key=value`` strings in place, parsing each to the existing value's type."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"config override {item!r} has no '='; expected key=value")
        parent, name = _resolve(config, key)
        old = parent[name]
        with parent.unlocked():
            parent[name] = parse_value(key, text, old)


def _resolve(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise UserError(f"unknown config key {key!r}; keys at {where}: {', '.join(known)}")
        if depth == len(parts) - 1:
            if isinstance(node[part], ml_collections.ConfigDict):
                raise UserError(f"config key {key!r} is a group; set one of its fields instead")
            return node, part
        node = node[part]
    raise AssertionError("unreachable")


def parse_value(key: str, text: str, old: Any) -> Any:
    """Parses ``text`` to the type of ``old``; raises UserError naming the key and the type."""
    if isinstance(old, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise UserError(f"config key {key!r} takes true or false, got {text!r}")
    if isinstance(old, int | float):
        kind = type(old)
        try:
            return kind(text) if kind is float else int(text, 10)
        except ValueError:
            raise UserError(f"config key {key!r} takes {kind.__name__}, got {text!r}") from None
    if isinstance(old, str):
        return text
    if isinstance(old, tuple | list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UserError(f"config key {key!r} takes a tuple like (1, 2), got {text!r}") from None
        if not isinstance(value, tuple | list):
            value = (value,)
        return type(old)(value)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def to_json(config: ml_collections.ConfigDict) -> str:
    """The config as stable, human-readable JSON (saved in every workdir)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Reverses :func:`to_json` (lists come back as tuples, as configs write them)."""
    return from_dict(json.loads(text))


def from_dict(values: dict[str, Any]) -> ml_collections.ConfigDict:
    """The locked config of ``values``, a config as JSON gives it back (lists become tuples,
    as configs write them)."""

    def tuples(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(tuples(v) for v in value)
        return value

    config = ml_collections.ConfigDict(tuples(values))
    config.lock()
    return config
