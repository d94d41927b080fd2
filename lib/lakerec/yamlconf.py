"""Typed YAML layers: mappings merged over each other and built into frozen dataclasses, every value checked.

Generic: it knows no lakerec key. :mod:`lakerec.config` declares the keys and their rules.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``, mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path | Traversable) -> dict:
    """A YAML file that must hold a mapping (a file, or a resource inside a wheel)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def unwrap_optional(hint: Any) -> Any:
    """The type inside ``Optional[...]``; any other hint unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _with_map_keys_joined(parts: list[str], root: type) -> list[str]:
    """Below a mapping field the rest of a dotted key is one map key (``spark.conf.spark.executor.memory``)."""
    cls: Any = root
    for i, part in enumerate(parts[:-1]):
        hint = unwrap_optional(typing.get_type_hints(cls).get(part)) if dataclasses.is_dataclass(cls) else None
        if typing.get_origin(hint) is dict:
            return parts[: i + 1] + [".".join(parts[i + 1 :])]
        if not dataclasses.is_dataclass(hint):
            return parts
        cls = hint
    return parts


def apply_set(data: dict, assignment: str, root: type) -> dict:
    """``data`` with one ``dotted.key=yaml value`` from the command line merged in (keys below ``root``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    node: dict = {}
    leaf = node
    parts = _with_map_keys_joined(dotted.strip().split("."), root)
    for part in parts[:-1]:
        leaf[part] = {}
        leaf = leaf[part]
    leaf[parts[-1]] = yaml.safe_load(raw)
    return deep_merge(data, node)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; return it converted to the declared form."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return None if value is None and type(None) in args else _coerce(value, unwrap_optional(hint), key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return build(hint, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        for k, v in value.items():
            if isinstance(v, (dict, list)) or v is None:
                raise ConfigError(f"config key '{key}.{k}' must be a single value, got {v!r}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if hint in (bool, int, float, str):
        accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str, int, float)}[hint]
        if not isinstance(value, accepted) or (isinstance(value, bool) and hint is not bool):
            what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
            raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")
        return hint(value)
    raise ConfigError(f"config key '{key}' has an unsupported type {hint}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """``cls`` from ``data``, every value checked against its type hint; an unknown key fails naming it."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' "
                          f"(known keys under '{prefix or '<top>'}': {sorted(names)})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


# One config key with its default and meaning: a row of the README's config table.
Setting = typing.NamedTuple("Setting", [("key", str), ("default", Any), ("doc", str)])


def settings(cls: type, prefix: str = "") -> list[Setting]:
    """Every key below ``cls`` as a dotted name in declaration order (an optional mapping is a key too)."""
    rows: list[Setting] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, unwrap_optional(hints[f.name])
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if not dataclasses.is_dataclass(hint) or default is None:
            rows.append(Setting(key, default, f.metadata["doc"]))  # KeyError: a key declared without setting()
        if dataclasses.is_dataclass(hint):
            rows += settings(hint, key + ".")
    return rows
