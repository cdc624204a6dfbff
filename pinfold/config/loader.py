"""Load, validate and write the TOML configuration.

``load(path)`` reads ``<home>/config.toml`` with ``tomllib``; a missing file
means all defaults. Unknown sections or keys and values of the wrong type are
``ConfigError`` naming the dotted key and the value (hypercorn's silent
``from_mapping`` is the example not to follow, STYLE.md 6).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pinfold.config.errors import ConfigError
from pinfold.config.schema import SECTIONS, Config


def _type_ok(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(item, v) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, types.UnionType):
        return any(_type_ok(a, value) for a in typing.get_args(annotation))
    return False


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0]).split(' ', 1)[1]}s"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, str(annotation)
    )


def from_mapping(data: dict[str, Any]) -> Config:
    """Build a validated ``Config`` from a parsed TOML mapping.

    Raises:
        ConfigError: unknown section or key, wrong type, or invalid value.
    """
    if not isinstance(data, dict):
        raise ConfigError("", "the config must be a TOML table")
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in SECTIONS:
            known = ", ".join(sorted(SECTIONS))
            raise ConfigError(name, f"unknown section (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(name, f"must be a table, got {table!r}")
        cls = SECTIONS[name].default_factory
        hints = typing.get_type_hints(cls)
        known_keys = {f.name for f in dataclasses.fields(cls)}
        for key, value in table.items():
            if key not in known_keys:
                raise ConfigError(f"{name}.{key}",
                                  f"unknown key (known: {', '.join(sorted(known_keys))})")
            if not _type_ok(hints[key], value):
                raise ConfigError(f"{name}.{key}",
                                  f"must be {_type_name(hints[key])}, got {value!r}")
            if hints[key] is float and not math.isfinite(float(value)):
                raise ConfigError(f"{name}.{key}", f"must be a finite number, got {value!r}")
        coerced = {k: (float(v) if hints[k] is float else v) for k, v in table.items()}
        sections[SECTIONS[name].name] = cls(**coerced)
    return Config(**sections)


def load(path: Path) -> Config:
    """Load ``path`` (all defaults when it does not exist).

    Raises:
        ConfigError: unreadable TOML (with line and column), or invalid content.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path}: {exc}") from exc
    return from_mapping(data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render(config: Config | None = None, *, commented_defaults: bool = True) -> str:
    """Render ``config`` as TOML with each key's documentation as a comment.

    With ``commented_defaults`` the values equal to the default are written as
    comments (``# key = value``), so the file holds only what differs, as
    DESIGN.md says, and still lists every key.
    """
    config = config or Config()
    defaults = Config()
    out = ["# pinfold configuration. Every key has a default; uncomment to change.",
           "# Durations are seconds (_s), sizes bytes (_bytes).", ""]
    for name, f in SECTIONS.items():
        section = getattr(config, f.name)
        default_section = getattr(defaults, f.name)
        out.append(f"[{name}]")
        for sf in dataclasses.fields(section):
            value = getattr(section, sf.name)
            doc = sf.metadata.get("doc", "")
            line = f"{sf.name} = {_toml_value(value)}"
            is_default = value == getattr(default_section, sf.name)
            prefix = "# " if (commented_defaults and is_default) else ""
            out.append(f"{prefix}{line:<48} # {doc}" if prefix else f"{line}   # {doc}")
        out.append("")
    return "\n".join(out)


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``config`` with some keys changed, validated (``replace(c, node={"listen": [...]})``)."""
    new = {}
    for name, changes in sections.items():
        f = SECTIONS[name]
        new[f.name] = dataclasses.replace(getattr(config, f.name), **changes)
    return dataclasses.replace(config, **new)
