"""The registry of pruning methods, and the conversion of user options onto a method's config.

The built-in methods register themselves when `prunelab.methods` is imported (its
`__init__` imports their modules), so anything that reaches this module through the
package finds them registered. This module imports no method module, which keeps the import
graph one-directional: method modules → base → registry.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Any

from prunelab.errors import PrunelabError  # noqa: F401  (kept for register's refusals)
from prunelab.method_catalogue import check_options, convert_option, type_name  # noqa: F401

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
    return [(f.name, type_name(hints.get(f.name, Any)), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls.Config)]


def option_types(cls: type[PruningMethod]) -> dict[str, Any]:
    """Each option of a method's config and its declared type, in the config's order."""
    hints = typing.get_type_hints(cls.Config)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls.Config)}


def make_method(name: str, options: dict[str, Any] | None = None) -> PruningMethod:
    """The method registered as `name`, configured from `options` (strings are converted to
    each option's declared type) and validated, so that bad options fail before any work."""
    cls = METHODS.get(name)
    converted = check_options(name, options, None if cls is None else option_types(cls),
                              METHODS)
    return cls(cls.Config(**converted))  # PruningMethod.__init__ validates the config
