"""`--key=value` command-line overrides, parsed and type-checked against a config dataclass.

nanoGPT's configurator behaviour (every knob overridable from the command line) without its
`exec(open('configurator.py').read())`: each value is converted to the field's annotated type (bool,
int, float, str, Literal, Optional of those), unknown keys get a close-match suggestion, and the
dataclass's own `__post_init__` validates the result.

References: nanoGPT `configurator.py`; litgpt `args.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

__all__ = ["ConfigError", "apply_overrides", "option_lines", "parse_overrides"]

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad `--key=value` override (unknown key, wrong type) or an invalid combination of values."""


# --- overrides ---


def _convert(name: str, raw: str, annotation: Any) -> Any:
    """Parse `raw` as the field type (bool, int, float, str, Literal, Optional of those)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null", "") and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _convert(name, raw, options[0]) if len(options) == 1 else raw
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"--{name} must be one of {', '.join(map(str, args))}; got {raw!r}")
        return raw
    if annotation is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name} expects a boolean (true/false), got {raw!r}")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--{name} expects an integer, got {raw!r}") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--{name} expects a number, got {raw!r}") from None
    if annotation is str:
        return raw
    raise ConfigError(f"--{name}: unsupported field type {annotation!r}")


def parse_overrides(cls: type[C], argv: Sequence[str]) -> dict[str, Any]:
    """`["--steps=10", "--resume"]` -> {"steps": 10, "resume": True}, checked against `cls`'s fields.

    Raises:
        ConfigError: an argument not of the form --key=value, an unknown key (with a suggestion),
            a value of the wrong type, or a bare --key for a non-boolean field.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"expected --key=value, got {arg!r}")
        key, sep, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise ConfigError(f"unknown option --{key}{hint}")
        if not sep:
            if hints[key] is not bool:
                raise ConfigError(f"--{key} needs a value: --{key}=...")
            raw = "true"
        out[key] = _convert(key, raw, hints[key])
    return out


def apply_overrides(config: C, argv: Sequence[str]) -> C:
    """A copy of `config` with the `--key=value` overrides applied (validated by __post_init__)."""
    try:
        return dataclasses.replace(config, **parse_overrides(type(config), argv))  # type: ignore[type-var]
    except TypeError as exc:  # pragma: no cover - parse_overrides already checks the names
        raise ConfigError(str(exc)) from exc


def option_lines(config: Any) -> list[str]:
    """`--help` lines of a config dataclass instance: `  --name=value  (type)` per field."""
    return [f"  --{f.name}={getattr(config, f.name)!r}  ({f.type})" for f in dataclasses.fields(config)]
