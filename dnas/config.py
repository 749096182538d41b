"""Recipes: YAML files loaded into config dataclasses, with ``--set key=value`` overrides.

A recipe is a YAML mapping whose keys are the fields of a (possibly nested) dataclass.
Loading is strict: an unknown key or a value of the wrong type raises
:class:`dnas.errors.ConfigError` naming the file and the key. Overrides use dotted keys
for nested sections (``--set optim.lr=0.05``) and YAML syntax for values
(``--set milestones=[10,20]``).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, TypeVar, Union

import yaml

from dnas.errors import ConfigError, brief
from dnas.strict_yaml import YamlRefused, load_yaml, read_yaml

T = TypeVar("T")
_EXPONENT_LITERAL = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, origins: Mapping[str, str] | None = None, prefix: str = "") -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float widening; refuse
    non-finite floats. ``prefix``: the dotted key of ``value`` (for nested sections, whose
    keys may come from ``origins``: see :func:`_build`)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, origins, prefix)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {brief(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {brief(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {brief(value)}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {brief(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {brief(value)}")
        return _build(tp, value, where, origins, f"{prefix}.")
    if tp is float:
        if isinstance(value, str) and _EXPONENT_LITERAL.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 6e-3 (no dot) as a string; YAML 1.2 and users read a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {brief(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {brief(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {brief(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {brief(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {brief(value)}")
        return value
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str, origins: Mapping[str, str] | None = None,
           prefix: str = "") -> T:
    """``cls(**data)`` with every value checked; a message names ``where`` (the recipe file)
    and the key, or the option a key came from when ``origins`` (dotted key -> ``--set``,
    ``--seed``, ...) has it."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {brief(unknown[0])} (known keys: {', '.join(sorted(names))})"
        )
    origins = origins or {}
    kwargs = {}
    for k, v in data.items():
        dotted = f"{prefix}{k}"
        kwargs[k] = _coerce(v, hints[k], f"{origins.get(dotted, where)}: key {dotted!r}", origins, dotted)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _nested_update(base: dict, dotted: str, value: Any, cls: type, where: str) -> None:
    parts = dotted.split(".")
    node, node_cls = base, cls
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node_cls)} if dataclasses.is_dataclass(node_cls) else {}
        if part not in fields:
            known = ", ".join(sorted(fields)) if fields else "(none)"
            raise ConfigError(f"{where}: unknown key {brief(dotted)} (known keys here: {known})")
        if i == len(parts) - 1:
            node[part] = value
            return
        hint = typing.get_type_hints(node_cls)[part]
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: key {'.'.join(parts[: i + 1])!r} is not a section")
        node_cls = hint


def parse_overrides(pairs: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; the value is read as YAML (``10``, ``[1,2]``, ``true``)."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {brief(pair)}: expected key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        try:
            value = load_yaml(raw, f"--set {brief(key, 60).strip(chr(39))}", lines=False) if raw.strip() else ""
        except YamlRefused as exc:
            raise ConfigError(str(exc)) from None
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                direct: Mapping[str, Any] | None = None) -> T:
    """Load a recipe YAML into ``cls``, apply ``--set`` overrides, then a CLI's direct flags.

    Args:
        cls: a dataclass whose fields all have defaults.
        path: recipe file (``None``: the dataclass defaults).
        overrides: ``key=value`` strings, dotted for nested sections.
        direct: values of a command's own flags (``--data``, ``--seed``, ...), checked
            against the field types like every other value.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type.
    """
    data: dict = {}
    origins: dict[str, str] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        loaded = read_yaml(path, ConfigError, "a recipe")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded
    for key, value in parse_overrides(overrides):
        _nested_update(data, key, value, cls, "--set")
        origins[key] = "--set"
    for key, value in (direct or {}).items():
        _nested_update(data, key, value, cls, f"--{key.replace('_', '-')}")
        origins[key] = f"--{key.replace('_', '-')}"
    return _build(cls, data, where, origins)


def config_to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass (for writing the resolved ``config.yaml``)."""
    return dataclasses.asdict(cfg)
