"""A method built on another one: OWL (per-layer sparsities), a user's sparsity map and DSnoT
(mask refinement) each take a registered `base` method that does the pruning itself.

`WrappingMethod` hands every hook to the base, and adds the statistics its own rule reads, so
a wrapper states only what it changes. Layers are grouped into decoder blocks by the block
index in their full name (`layer_blocks`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from prunelab.errors import PrunelabError
from prunelab.methods.base import MethodConfig, PlanContext, PruningMethod, make_method

_BLOCK_INDEX = re.compile(r"^(.*?)\.(\d+)(?:\.|$)")


def layer_blocks(names: Iterable[str]) -> dict[str, int]:
    """Each full layer name's decoder-block index: the first all-digit part of the name
    ("model.layers.3.mlp.up_proj" → 3), as the engine names layers `<blocks>.<i>.<layer>`."""
    blocks = {}
    for name in names:
        match = _BLOCK_INDEX.match(name)
        if match is None:
            raise ValueError(f"layer {name!r} has no block index in its name")
        blocks[name] = int(match.group(2))
    return blocks


@dataclass
class WrappingConfig(MethodConfig):
    base: str = field(default="wanda", metadata={
        "help": "the registered method that prunes each layer (e.g. wanda, sparsegpt, "
                "magnitude)"})


class WrappingMethod(PruningMethod):
    """Delegates every hook to `self.base`; subclasses override what their rule changes."""

    Config: ClassVar[type] = WrappingConfig
    # Statistics the wrapper's own rule reads, beside the base's.
    extra_statistics: ClassVar[tuple[str, ...]] = ()
    extra_planning_statistics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config):
        super().__init__(config)
        if config.base == self.name:
            raise PrunelabError(f"method {self.name} cannot be its own base",
                                "give e.g. --option base=wanda")
        self.base = make_method(config.base)
        self.statistics = tuple(dict.fromkeys(self.base.statistics + self.extra_statistics))
        self.planning_statistics = tuple(dict.fromkeys(
            self.base.planning_statistics + self.extra_planning_statistics))
        self.supports_nm = type(self).supports_nm and self.base.supports_nm
        self.needs_block_inputs = self.base.needs_block_inputs

    def check_request(self, sparsity, pattern):
        if type(self).sets_layer_sparsities and self.base.sets_layer_sparsities:
            raise PrunelabError(f"base {self.base.name} sets its own layer sparsities, which "
                                f"{self.name} would override",
                                "choose a base that prunes each layer uniformly, e.g. wanda")
        self.base.check_request(sparsity, pattern)

    def check_model(self, model, sparsity=None, pattern=None):
        self.base.check_model(model, sparsity, pattern)

    def base_plan(self, context: PlanContext, own_targets: bool) -> Mapping | None:
        """The base's plan; a base that sets layer sparsities itself cannot be combined with a
        wrapper that sets them too."""
        planned = self.base.plan(context)
        if planned and own_targets:
            raise PrunelabError(f"base {self.base.name} sets its own layer sparsities, which "
                                f"{self.name} would override",
                                "choose a base that prunes each layer uniformly, e.g. wanda")
        return planned

    def plan(self, context):
        return self.base_plan(context, own_targets=False)

    def sequential_groups(self) -> bool:
        return self.base.sequential_groups()

    def prune_block(self, block, layers, stats, targets, **inputs):
        return self.base.prune_block(block, layers, stats, targets, **inputs)
