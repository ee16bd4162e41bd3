"""Frozen-dataclass configs from YAML with dotted command-line overrides.

A config is a tree of frozen ``kw_only`` dataclasses. ``load_config(Cls, path, ["a.b=3"])``
reads the YAML file, applies ``key=value`` overrides (values parsed as YAML scalars, so
``lr=1e-6``, ``flag=true``, ``name=null`` work), checks every key against the dataclass fields
and converts values to the annotated types. An unknown or mistyped key raises
:class:`~toolrl_jax.errors.ConfigError` naming the key and the closest valid one. A NaN or
infinite number anywhere (``optim.learning_rate=.nan``, ``"inf"`` for a float field, inside a
mapping such as ``reward.components``) is refused the same way: no config value needs one, and
one NaN turns a whole run into NaN.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import pathlib
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from toolrl_jax.errors import ConfigError

T = TypeVar("T")


def _subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if not close:  # abbreviations: 'lr' -> 'learning_rate' (same first letter, letters in order)
        close = [v for v in sorted(valid) if key and v[:1] == key[:1] and _subsequence(key, v)]
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(sorted(valid))


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Converts a YAML value to ``annotation`` (dataclass, Optional, tuple, scalar)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}"
            )
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(annotation, type) and isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} fields")
        return _build(annotation, value, where)
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_type = args[0] if args else Any
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is not list and annotation is not list else items
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        _check_finite(number, where)
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _check_finite(value: Any, where: str) -> None:
    """Raises ConfigError naming the key of the first NaN / infinite number inside ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number; give a finite value")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


def _build(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key '{full}': {_suggest(key, fields)}")
        _check_finite(value, full)
        kwargs[key] = _convert(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """Parses ``key.sub=value`` strings; values are YAML scalars (``1e-6``, ``true``, ``null``)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.subkey=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Builds ``cls`` from a nested mapping, validating every key and value."""
    return _build(cls, data)


def load_config(cls: type[T], path: str | pathlib.Path | None, overrides: Sequence[str] = ()) -> T:
    """Loads ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = pathlib.Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must contain a mapping at the top level")
        data = loaded
    for key, value in parse_overrides(overrides):
        _seed_mapping_default(cls, data, key)
        _set_dotted(data, key, value)
    return _build(cls, data)


def _seed_mapping_default(cls: type, data: dict, dotted: str) -> None:
    """An override inside a mapping field the YAML did not give (``reward.components.otc=0.5``)
    adds to the field's default mapping instead of replacing it; a mapping written in YAML
    replaces the default, and overrides then add to it."""
    parts = dotted.split(".")
    node, typ = data, cls
    for i, part in enumerate(parts[:-1]):
        if not (dataclasses.is_dataclass(typ) and isinstance(node, dict)):
            return
        fields = {f.name: f for f in dataclasses.fields(typ)}
        if part not in fields:
            return
        hint = typing.get_type_hints(typ)[part]
        if dataclasses.is_dataclass(hint):
            node, typ = node.setdefault(part, {}), hint
            continue
        origin = typing.get_origin(hint)
        factory = fields[part].default_factory
        if (origin in (dict, Mapping) or hint is dict) and i == len(parts) - 2 \
                and part not in node and factory is not dataclasses.MISSING:
            node[part] = dict(factory())
        return


def config_to_dict(config: Any) -> Any:
    """The config as plain data (for the resolved-config file and JSON logs)."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config


def save_config(config: Any, path: str | pathlib.Path) -> None:
    """Writes the resolved config as YAML (``resolved_config.yaml`` in every run directory)."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(json.loads(json.dumps(config_to_dict(config))), sort_keys=False))
