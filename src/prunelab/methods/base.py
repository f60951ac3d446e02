"""What a pruning method is.

A method is a typed config plus pure tensor math. It never loops over layers or loads data:
the engine (`prunelab.engine`) walks the model block by block, collects the statistics the
method names, and calls its hooks, each of which has a default that suits one-shot pruners:
- `plan(context)`: once, before any block is pruned, with every prunable weight matrix and,
  if the method names `planning_statistics`, those statistics from a dense pass over the
  calibration data (gradients included). It may return per-layer targets (non-uniform
  sparsity, as OWL) or keep what it learned (a global threshold).
- `prune_block(block, layers, stats, targets)`: each block (or group of its layers, with
  `sequential_groups`), given the `statistics` collected on its inputs; the default hands
  each layer to `prune_layer`. A block step may also rebuild modules (structured pruning).
- `prune_layer(weight, stats, target)`: the pure math on one weight matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunelab import arch
from prunelab.methods.masks import NMPattern
from prunelab.methods.quant import QuantizedWeight
from prunelab.methods.registry import list_methods, make_method, option_help, register

__all__ = ["LayerDecision", "LayerStats", "LayerTarget", "MethodConfig", "MethodCost", "NoOptions",
           "PlanContext", "PruningMethod", "list_methods", "make_method",
           "option_help", "register", "working_copy"]


def working_copy(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a contiguous fp32 copy [out, in]: methods are free to compute on
    it without touching the model."""
    return arch.weight_matrix(layer).to(torch.float32, copy=True).contiguous()


class LayerStats(Mapping):
    """One layer's statistics by name (read-only), and the number of tokens they came from.

    `stats["hessian"]` and `stats.hessian` are the same. Layers that read one input tensor
    share the tensors: never modify them.
    """

    def __init__(self, n_tokens: int = 0, values: Mapping[str, Any] | None = None, **named: Any):
        self.n_tokens = n_tokens
        self._values = {**(values or {}), **named}

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"statistic {name!r} was not collected for this layer; name it in "
                           f"the method's `statistics`") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"statistic {name!r} was not collected for this layer; name "
                                 f"it in the method's `statistics`") from None

    def __repr__(self) -> str:
        return f"LayerStats(n_tokens={self.n_tokens}, names={list(self._values)})"


@dataclass(frozen=True)
class LayerTarget:
    name: str  # full module name, e.g. "model.layers.3.mlp.down_proj"
    sparsity: float
    pattern: NMPattern | None


@dataclass
class LayerDecision:
    """A method's answer for one layer: the new weight and which entries are pruned.

    With `pruned=None` the weight is written as given and no mask is kept (quantization:
    the notes may record the bit width). Otherwise entries where `pruned` is True are set
    to exactly zero. A quantizer also returns its codes, scales and zero points in
    `quantized` (the weight is then their dequantized value); the engine keeps them for
    packed checkpoints.
    """

    weight: torch.Tensor  # [out, in], may differ from the input (SparseGPT updates weights)
    pruned: torch.Tensor | None  # bool [out, in], True = set to zero
    notes: dict = dataclasses.field(default_factory=dict)
    quantized: QuantizedWeight | None = None


@dataclass(frozen=True)
class PlanContext:
    """What a method sees before any block is pruned."""

    weights: Mapping[str, torch.Tensor]  # every prunable matrix [out, in] by full name
    # (the model's own tensors, on their home device: read them, never write them)
    sparsity: float
    pattern: NMPattern | None
    # The method's `planning_statistics` per layer by full name, gathered on the dense model
    # (blocks are not pruned during that pass); empty when it names none.
    statistics: Mapping[str, LayerStats] = dataclasses.field(default_factory=dict)
    # The calibration windows' shape (windows, tokens per window), None without calibration:
    # for rules stated per calibration sample (GBLM's and DSnoT's running means over samples).
    windows: tuple[int, ...] | None = None


class MethodConfig:
    """Base of a method's config: a dataclass whose fields are the options (with `help` in
    their metadata). `validate` refuses bad values when the method is made, before any work."""

    def validate(self) -> None:
        """Raise PrunelabError naming the option and what it may be."""


@dataclass
class NoOptions(MethodConfig):
    """This method has no options."""


@dataclass(frozen=True)
class MethodCost:
    """What a method costs, for a study's dry-run time estimate (`prunelab.study.estimate`).

    `passes`: wall time in dense forward passes over the calibration set (sequential pruning
    needs two per block; a backward pass per window, as GBLM's, adds about as much again).
    `seconds_per_mparam`: work that grows with the weights rather than the tokens (SparseGPT's
    and GPTQ's sweep over every column), in seconds per million parameters. A wrapping method
    (OWL, DSnoT) declares only its own work: its base's cost is added to it.
    The default, three passes, is a cautious guess for a method nobody has timed yet: time
    yours with bench/bench_methods.py and declare what you measure."""

    passes: float = 3.0
    seconds_per_mparam: float = 0.0


class PruningMethod:
    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type] = NoOptions
    supports_nm: ClassVar[bool] = True
    # Registered statistic names (prunelab.methods.statistics), collected for each block on
    # the inputs the already-pruned blocks before it produce, and given to prune_block.
    statistics: ClassVar[tuple[str, ...]] = ()
    # Collected for every layer on the dense model before pruning, and given to plan. Names
    # whose accumulator reads "weight_grad" cost one forward and backward pass per window.
    planning_statistics: ClassVar[tuple[str, ...]] = ()
    # A quantizer removes no weights: it runs at sparsity 0 unless given one.
    quantizes: ClassVar[bool] = False
    # Whether `prune_block` also needs the block's calibration inputs, to run the block itself
    # (methods that optimise a whole block against its outputs, as BESA): the engine then
    # passes a `BlockInputs` (prunelab.engine) as the keyword `inputs`.
    needs_block_inputs: ClassVar[bool] = False
    # Whether the method decides each layer's sparsity itself (a global threshold, an
    # allocation rule) rather than taking the one it is given; a wrapper that allocates
    # sparsities cannot sit on such a base.
    sets_layer_sparsities: ClassVar[bool] = False
    # Its time for the dry run's estimate (see MethodCost; the default is a guess).
    cost: ClassVar[MethodCost] = MethodCost()

    def __init__(self, config: Any):
        self.config = config
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()

    @property
    def needs_calibration(self) -> bool:
        """Whether the engine needs calibration windows to run this method."""
        return bool(self.statistics or self.planning_statistics or self.needs_block_inputs)

    def check_request(self, sparsity: float, pattern: NMPattern | None) -> None:
        """Refuse (PrunelabError) a sparsity or pattern this method cannot meet; called before
        the model is loaded."""

    def check_model(self, model: nn.Module, sparsity: float | None = None,
                    pattern: NMPattern | None = None) -> None:
        """Refuse (PrunelabError) what only the loaded model can tell: a layer this method
        cannot handle, layer names a user listed, a target its shapes cannot meet. Called
        before any work, when the model is loaded and again when pruning starts (where it
        may also note what `plan` needs from the model's structure)."""

    def finish(self, model: nn.Module) -> None:
        """Called once after the last block is pruned (structured methods write the config
        that describes the new shapes)."""

    def plan(self, context: PlanContext) -> Mapping[str, LayerTarget | float] | None:
        """Called once before any block is pruned. Return per-layer targets (a LayerTarget or
        a sparsity, by full layer name; layers left out keep the requested sparsity and
        pattern), or None to keep them all."""
        return None

    def sequential_groups(self) -> bool:
        """Whether to prune a block's layers group by group, re-collecting inputs in between."""
        return False

    def prune_block(self, block: nn.Module, layers: Mapping[str, nn.Module],
                    stats: Mapping[str, LayerStats], targets: Mapping[str, LayerTarget],
                    ) -> Mapping[str, LayerDecision] | Iterable[tuple[str, LayerDecision]]:
        """Decide the layers of one block (or group), named as inside the block.

        Return decisions by layer name, as a mapping or as (name, decision) pairs; the engine
        writes each one as it arrives, so a generator holds one layer's result at a time. A
        block step may instead change modules itself (replace a linear by a smaller one) and
        return no decision for them; the engine then records their new shapes.
        """
        for name, layer in layers.items():
            # No local names: the copy and the decision are freed as soon as each is used.
            yield name, self.prune_layer(working_copy(layer), stats[name], targets[name])

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats,
                    target: LayerTarget) -> LayerDecision:
        raise NotImplementedError
