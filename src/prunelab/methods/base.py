"""What a pruning method is, and the registry that finds one by name.

A method is a typed config plus pure tensor math. It never loops over layers or loads data:
the engine (`prunelab.engine`) walks the model block by block, collects the statistic the
method declares (`statistic`), and hands each layer's weight matrix to `prune_layer`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from prunelab.errors import PrunelabError
from prunelab.methods.masks import NMPattern


class Statistic(str, enum.Enum):
    """What the engine must collect from each layer's calibration inputs."""

    NONE = "none"  # the weights alone decide
    INPUT_SQ_SUM = "input_sq_sum"  # Σ over tokens of x_j², one value per input feature
    HESSIAN = "hessian"  # (2/N) Σ x xᵀ over tokens, [in, in]


@dataclass
class LayerStats:
    n_tokens: int = 0
    input_sq_sum: torch.Tensor | None = None
    hessian: torch.Tensor | None = None


@dataclass(frozen=True)
class LayerTarget:
    name: str  # full module name, e.g. "model.layers.3.mlp.down_proj"
    sparsity: float
    pattern: NMPattern | None


@dataclass
class LayerDecision:
    """A method's answer for one layer: the new weight and which entries are pruned."""

    weight: torch.Tensor  # [out, in], may differ from the input (SparseGPT updates weights)
    pruned: torch.Tensor  # bool [out, in], True = set to zero
    notes: dict = dataclasses.field(default_factory=dict)


@dataclass
class NoOptions:
    """This method has no options."""


class PruningMethod:
    name: ClassVar[str]
    summary: ClassVar[str]
    statistic: ClassVar[Statistic] = Statistic.NONE
    Config: ClassVar[type] = NoOptions
    supports_nm: ClassVar[bool] = True

    def __init__(self, config: Any):
        self.config = config

    def prepare(self, layers: dict[str, torch.Tensor], sparsity: float,
                pattern: NMPattern | None) -> None:
        """Called once with every prunable weight matrix before any block is pruned.

        Methods that decide globally (one threshold over the whole model) plan here.
        """

    def sequential_groups(self) -> bool:
        """Whether to prune a block's layers group by group, re-collecting inputs in between."""
        return False

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats,
                    target: LayerTarget) -> LayerDecision:
        raise NotImplementedError


METHODS: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[type[PruningMethod]]:
    _load_builtin()
    return [METHODS[name] for name in sorted(METHODS)]


def option_help(cls: type[PruningMethod]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each option of a method's config."""
    rows = []
    for f in dataclasses.fields(cls.Config):
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f.name, type_name, f.default, f.metadata.get("help", "")))
    return rows


def make_method(name: str, options: dict[str, Any] | None = None) -> PruningMethod:
    _load_builtin()
    if name not in METHODS:
        raise PrunelabError(f"unknown method {name!r}",
                            f"use one of {', '.join(sorted(METHODS))} (see `prunelab methods`)")
    cls = METHODS[name]
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise PrunelabError(f"method {name} has no option {', '.join(unknown)}",
                            f"its options are: {valid}")
    converted = {key: _convert(name, key, value, fields[key]) for key, value in options.items()}
    return cls(cls.Config(**converted))


def _convert(method: str, key: str, value: Any, field: dataclasses.Field) -> Any:
    default = field.default
    kind = type(default) if default is not None and default is not dataclasses.MISSING else None
    if kind is None or isinstance(value, kind):
        return value
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise PrunelabError(f"option {key}={value!r} of method {method} is not a {kind.__name__}",
                            f"give {key} as a {kind.__name__}") from None


def _load_builtin() -> None:
    # Importing the modules registers them.
    from prunelab.methods import magnitude, sparsegpt, wanda  # noqa: F401
