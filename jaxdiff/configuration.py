"""Config files and command-line overrides.

A config file defines ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``; it is
named on the command line as ``path/to/config.py[:arg]``, or by the name of a config that comes
with jaxdiff, ``shapes_t2i[:arg]`` (the ``configs/`` folder of a checkout, installed as
``jaxdiff.configs``). A config file runs as a module of a package over its own folder, so it
imports its siblings relatively (``from . import common``) wherever that folder is. Overrides take
the form ``--config.train.steps=100``; each is parsed to the type of the value it replaces.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from jaxdiff.errors import UserError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


_PACKAGES = itertools.count()  # a fresh package name for each config file run


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path[:arg]`` or ``name[:arg]``, applies ``key=value`` overrides and returns the
    locked config."""
    where, _, arg = spec.partition(":")
    path = config_path(where)
    module = _run_config_file(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {where!r} defines no get_config(arg=None)")
    config = module.get_config(arg or None)
    apply_overrides(config, overrides)
    config.lock()
    return config


def shipped_configs() -> Path:
    """The folder of the configs that come with jaxdiff: ``jaxdiff/configs`` when installed,
    ``configs/`` beside the package in a checkout."""
    package = Path(__file__).parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def config_names() -> list[str]:
    """The names of the shipped configs (their files that define ``get_config``)."""
    return sorted(
        path.stem
        for path in shipped_configs().glob("*.py")
        if "def get_config(" in path.read_text(encoding="utf-8")
    )


def config_path(where: str) -> Path:
    """The config file ``where`` names: a path to a ``.py`` file, or a shipped config's name."""
    path = Path(where)
    if path.suffix == ".py" or len(path.parts) != 1:
        if path.suffix != ".py" or not path.is_file():
            raise UserError(
                f"config file {where!r} not found; expected a path to a .py config file or the "
                f"name of one of jaxdiff's configs: {', '.join(config_names())}"
            )
        return path
    names = config_names()
    if where not in names:
        raise UserError(
            f"unknown config {where!r}; known names: {', '.join(names)} (or a path to a .py "
            "config file)"
        )
    return shipped_configs() / f"{where}.py"


def _run_config_file(path: Path) -> ModuleType:
    """Runs a config file as a module of a fresh package whose folder is the file's, so that its
    relative imports find its siblings; the package is forgotten afterwards, so each load reads
    the files again."""
    package = f"jaxdiff_config_folder_{next(_PACKAGES)}"
    package_spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    package_spec.submodule_search_locations = [str(path.absolute().parent)]
    sys.modules[package] = importlib.util.module_from_spec(package_spec)
    try:
        module_spec = importlib.util.spec_from_file_location(f"{package}.{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    finally:
        for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
            del sys.modules[name]
    return module


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
            if not all(isinstance(item, str) for item in old):
                raise UserError(
                    f"config key {key!r} takes a tuple like (1, 2), got {text!r}"
                ) from None
            value = tuple(item.strip() for item in text.split(",") if item.strip())  # a,b,c
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
