"""The registry of pruning methods, and the conversion of user options onto a method's config.

The built-in methods register themselves when `prunelab.methods` is imported (its
`__init__` imports their modules), so anything that reaches this module through the
package finds them registered. This module imports no method module, which keeps the import
graph one-directional: method modules → base → registry.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, Literal

from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    from prunelab.methods.base import PruningMethod

METHODS: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Register a method class; a name taken twice is refused."""
    if cls.name in METHODS:
        raise PrunelabError(f"a method named {cls.name!r} is already registered",
                            "give the new method another name")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[type[PruningMethod]]:
    return [METHODS[name] for name in sorted(METHODS)]


def option_help(cls: type[PruningMethod]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each option of a method's config."""
    hints = typing.get_type_hints(cls.Config)
    return [(f.name, _type_name(hints.get(f.name, Any)), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls.Config)]


def make_method(name: str, options: dict[str, Any] | None = None) -> PruningMethod:
    """The method registered as `name`, configured from `options` (strings are converted to
    each option's declared type) and validated, so that bad options fail before any work."""
    if name not in METHODS:
        raise PrunelabError(f"unknown method {name!r}",
                            f"use one of {', '.join(sorted(METHODS))} (see `prunelab methods`)")
    cls = METHODS[name]
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        valid = ", ".join(fields) or "none"
        raise PrunelabError(f"method {name} has no option {', '.join(unknown)}",
                            f"its options are: {valid}")
    hints = typing.get_type_hints(cls.Config)
    converted = {key: convert_option(name, key, value, hints.get(key, Any))
                 for key, value in options.items()}
    return cls(cls.Config(**converted))  # PruningMethod.__init__ validates the config


_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def convert_option(method: str, key: str, value: Any, declared: Any) -> Any:
    """`value` (a string from the command line, or a YAML scalar) as the `declared` type."""
    try:
        return _coerce(value, declared)
    except ValueError:
        expected = _describe(declared)
        raise PrunelabError(f"option {key}={value!r} of method {method} is not {expected}",
                            f"give {key} as {expected}") from None


def _coerce(value: Any, kind: Any) -> Any:
    """`value` converted to `kind`; ValueError if it does not fit."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        choices = typing.get_args(kind)
        if type(None) in choices and (value is None or (
                isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        for choice in choices:
            if choice is not type(None):
                try:
                    return _coerce(value, choice)
                except ValueError:
                    pass
        raise ValueError(value)
    if origin is Literal:
        for allowed in typing.get_args(kind):
            if type(value) is type(allowed) and value == allowed:
                return allowed
            if isinstance(value, str) and not isinstance(allowed, str):
                try:
                    if _coerce(value, type(allowed)) == allowed:
                        return allowed
                except ValueError:
                    pass
        raise ValueError(value)
    if kind is Any:
        return value
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(value)  # True is an int to Python, but never a number to a user
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise ValueError(value)
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            return int(value)
        raise ValueError(value)
    if kind is float:
        if isinstance(value, (int, float, str)):
            return float(value)
        raise ValueError(value)
    if kind is str:
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ValueError(value)
    if isinstance(kind, type) and isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(value) from None


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if c is type(None) else _type_name(c)
                          for c in typing.get_args(kind))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def _describe(kind: Any) -> str:
    """The expected type in words, for an error message: "a float", "a float or none"."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(c) for c in typing.get_args(kind) if c is not type(None)]
        if type(None) in typing.get_args(kind):
            parts.append("none")
        return " or ".join(parts)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    name = _type_name(kind)
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"
