"""Every built-in method's name and option fields as plain data, and the conversion of user
options onto them: what the command line checks before torch is imported.

The method modules import torch, so the CLI cannot ask the registry whether `--method wandda`
or `--option percdam=0.1` exist without loading the heavy stack. This catalogue answers
instead; `tests/test_method_catalogue.py` proves it equal to the registry (names, option names
and types, `supports_nm`, `quantizes`), so a new method or option that is not added here fails
that test, which prints the entry to add. The registry's `make_method` refuses through the same
`check_options`, so both answer with the same words.
"""

from __future__ import annotations

import sys

import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class MethodShape:
    """What can be checked about a method without importing it."""

    options: Mapping[str, Any] = field(default_factory=dict)  # name -> declared type, in order
    supports_nm: bool = True
    quantizes: bool = False


# The option fields that several configs inherit (WrappingConfig, StructuredConfig, QuantConfig).
_WRAPPING = {"base": str}
_STRUCTURED = {"heads": float | None, "channels": float | None,
               "gqa": Literal["query", "group"]}
_QUANT = {"bits": int, "group_size": int | None, "symmetric": bool}
_METRIC = Literal["WIFV", "IFV", "WIFN"]

METHOD_CATALOGUE: dict[str, MethodShape] = {
    "besa": MethodShape({"per_row": bool, "min_rate": float, "max_rate": float, "step": float,
                         "beta": float, "lr": float, "epochs": int, "windows_per_step": int,
                         "sigmoid_smooth": bool}, supports_nm=False),
    "dsnot": MethodShape({**_WRAPPING, "max_cycles": int, "update_threshold": float,
                          "var_power": float, "skip": str, "same_sign": bool}),
    "flap": MethodShape({**_STRUCTURED, "metric": _METRIC,
                         "structure": Literal["AL-AM", "UL-UM"], "bias": bool},
                        supports_nm=False),
    "gblm": MethodShape({"alpha": float}),
    "gptq": MethodShape({**_QUANT, "blocksize": int, "percdamp": float, "act_order": bool,
                         "static_groups": bool, "keep_zeros": bool, "true_sequential": bool,
                         "max_damp_retries": int}, supports_nm=False, quantizes=True),
    "magnitude": MethodShape(),
    "magnitude-band": MethodShape({"band_low": float, "band_high": float | None},
                                  supports_nm=False),
    "magnitude-global": MethodShape(),
    "magnitude-sp": MethodShape(_STRUCTURED, supports_nm=False),
    "owl": MethodShape({**_WRAPPING, "m": float, "lam": float}),
    "random": MethodShape({"mask_seed": int, "per_row": bool}),
    "ssm-flap": MethodShape({"unit": Literal["heads", "state"], "metric": Literal["WIFV", "IFV"]},
                            supports_nm=False),
    "rtn": MethodShape(_QUANT, supports_nm=False, quantizes=True),
    "seap": MethodShape({**_STRUCTURED, "metric": _METRIC, "bias": bool, "k": float,
                         "x0": float, "keep_first": int, "keep_last": int}, supports_nm=False),
    "sparsegpt": MethodShape({"blocksize": int, "percdamp": float, "true_sequential": bool,
                              "max_damp_retries": int, "bits": int | None,
                              "group_size": int | None, "symmetric": bool}),
    "sparsity-map": MethodShape({**_WRAPPING, "file": str}, supports_nm=False),
    "wanda": MethodShape(),
    "wanda-sp": MethodShape(_STRUCTURED, supports_nm=False),
    "wanda-variant": MethodShape(supports_nm=False),
}


def known_methods() -> dict[str, MethodShape]:
    """The built-in methods' shapes, and those of methods registered while this process runs
    (a user's own, `@register` in their file): those are read from the registry, which is
    loaded already if anything registered one, so no torch is imported here for it."""
    registry = sys.modules.get("prunelab.methods.registry")
    if registry is None:
        return METHOD_CATALOGUE
    extra = {name: MethodShape(registry.option_types(cls), cls.supports_nm, cls.quantizes)
             for name, cls in registry.METHODS.items() if name not in METHOD_CATALOGUE}
    return {**METHOD_CATALOGUE, **extra} if extra else METHOD_CATALOGUE


def method_shape(name: str) -> MethodShape:
    """The shape of method `name`; one line naming the known methods if there is none."""
    known = known_methods()
    shape = known.get(name)
    check_options(name, {}, None if shape is None else shape.options, known)
    return shape


def check_options(method: str, options: Mapping[str, Any] | None,
                  declared: Mapping[str, Any] | None, known: Iterable[str]) -> dict[str, Any]:
    """`options` converted to the `declared` types of `method`'s option fields.

    `declared` None means there is no such method (`known` lists those there are). Refuses an
    unknown method, an unknown option, or a value that is not of its option's type.
    """
    if declared is None:
        raise PrunelabError(f"unknown method {method!r}",
                            f"use one of {', '.join(sorted(known))} (see `prunelab methods`)")
    options = dict(options or {})
    unknown = sorted(set(options) - set(declared))
    if unknown:
        valid = ", ".join(declared) or "none"
        raise PrunelabError(f"method {method} has no option {', '.join(unknown)}",
                            f"its options are: {valid}")
    return {key: convert_option(method, key, value, declared[key])
            for key, value in options.items()}


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


def type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if c is type(None) else type_name(c)
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
    name = type_name(kind)
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"
