"""Structured pruning's shared rules, and the FLAP paper's two structured baselines.

The units that can be removed (`prunelab.structure` does the surgery):
- attention, `gqa=query` (default): one query head from every key/value group, so each
  group keeps the same number of query heads (transformers' grouped attention needs that);
  the key/value heads stay. A unit costs kv_heads · 2 · head_dim · hidden parameters.
- attention, `gqa=group`, or any model whose groups hold one query head (multi-head
  attention): a whole key/value group with its query heads, (2g + 2) · head_dim · hidden.
- an MLP channel: a row of gate and up and a column of down, 3 · hidden.

The target: `sparsity` is the share of the blocks' linear parameters removed (the same
count unstructured sparsity is measured on). `heads` fixes the share of query heads removed
and `channels` the share of MLP channels; a part left open is solved from the target; with
both given the target must match what they remove.

Uniform structure (UL-UM, the baselines' only one): every layer loses the same units. As in
FLAP's code the attention part is int(ratio · units); the MLP then makes up the target
(FLAP removes int(ratio · channels) whatever the heads' rounding left, which on a model with
three key/value groups would leave most of a 20% target unmet).

- `magnitude-sp`: a channel's score is the L2 norm of its column of the output projection
  (o_proj for a head's channels, down_proj for the MLP); a head's, the sum over its channels.
- `wanda-sp`: a channel's score is mean over rows of |W_ij| · ‖X_j‖₂ on the same columns;
  sequential, as Wanda: each block's inputs come from the already-pruned blocks.
Neither compensates with a bias (FLAP's baselines run with bias=False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from prunelab import arch, structure
from prunelab.errors import PrunelabError
from prunelab.methods.base import MethodConfig, MethodCost, PruningMethod, register


@dataclass
class StructuredConfig(MethodConfig):
    heads: float | None = field(default=None, metadata={
        "help": "share of query heads to remove, in [0, 1) (default: solved from --sparsity)"})
    channels: float | None = field(default=None, metadata={
        "help": "share of MLP channels to remove, in [0, 1) (default: solved from --sparsity)"})
    gqa: Literal["query", "group"] = field(default="query", metadata={
        "help": "grouped attention: remove query heads evenly from every group, or whole "
                "key/value groups"})

    def validate(self) -> None:
        for key in ("heads", "channels"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < 1:
                raise PrunelabError(f"{key}={value} is outside [0, 1)",
                                    f"give {key} as a share below 1, e.g. {key}=0.25")


@dataclass(frozen=True)
class AttentionUnits:
    """How one layer's attention can shrink: `count` units of `cost` parameters."""

    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    by_group: bool  # units are whole key/value groups

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    @property
    def count(self) -> int:
        return self.kv_heads if self.by_group else self.group_size

    @property
    def heads_per_unit(self) -> int:
        return self.group_size if self.by_group else self.kv_heads

    @property
    def cost(self) -> int:
        if self.by_group:
            return (2 * self.group_size + 2) * self.head_dim * self.hidden
        return self.kv_heads * 2 * self.head_dim * self.hidden

    def order(self, head_scores: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
        """The units, least important first, as lists of query heads, and each unit's score
        (the mean of its heads'). Query units take the k-th lowest head of every group, so
        removing the first r units removes each group's r lowest heads."""
        g = self.group_size
        per_group = head_scores.reshape(self.kv_heads, g).to(torch.float64)
        if self.by_group:
            scores = per_group.mean(dim=1)
            order = torch.sort(scores, stable=True).indices.tolist()
            return ([list(range(j * g, (j + 1) * g)) for j in order],
                    scores[order].to(torch.float32))
        ranks = torch.sort(per_group, dim=1, stable=True)
        index = ranks.indices.tolist()  # one copy, not one per head from an accelerator
        units = [[j * g + index[j][k] for j in range(self.kv_heads)] for k in range(g)]
        return units, ranks.values.mean(dim=0).to(torch.float32)

    def keep_after(self, units: list[list[int]], removed: int) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """(query heads, key/value heads) kept once the first `removed` units go."""
        gone = {h for unit in units[:removed] for h in unit}
        keep = torch.tensor([h for h in range(self.heads) if h not in gone], dtype=torch.long)
        if self.by_group:
            kv = torch.tensor(sorted({h // self.group_size for h in keep.tolist()}),
                              dtype=torch.long)
        else:
            kv = torch.arange(self.kv_heads)
        return keep, kv


def attention_units(parts: structure.BlockParts, gqa: str) -> AttentionUnits:
    return AttentionUnits(parts.heads, parts.kv_heads, parts.head_dim, parts.hidden,
                          by_group=gqa == "group" or parts.group_size == 1)


def block_params(parts: structure.BlockParts) -> int:
    """The parameters of the block's seven linear weights."""
    attn, mlp = parts.attention, parts.mlp
    return sum(getattr(m, n).weight.numel() for m, names in
               ((attn, structure.ATTENTION_LINEARS), (mlp, structure.MLP_LINEARS))
               for n in names)


def channel_cost(parts: structure.BlockParts) -> int:
    return 3 * parts.hidden


def heads_to_units(units: AttentionUnits, heads_ratio: float, total_heads: int,
                   where: str) -> int:
    """The number of units that removes `heads_ratio` of `total_heads` query heads."""
    n = round(heads_ratio * total_heads)
    if n >= total_heads:
        raise PrunelabError(f"heads={heads_ratio} would remove every attention head of {where}",
                            "give a smaller heads ratio")
    if n % units.heads_per_unit:
        step = units.heads_per_unit / total_heads
        raise PrunelabError(
            f"heads={heads_ratio} removes {n} of {total_heads} query heads of {where}, a "
            f"split grouped-query attention cannot express (units of {units.heads_per_unit})",
            f"give heads as a multiple of {step:.4f}"
            + (", or gqa=query" if units.by_group and units.group_size > 1 else ""))
    return n // units.heads_per_unit


def uniform_counts(parts: structure.BlockParts, units: AttentionUnits, sparsity: float,
                   heads: float | None, channels: float | None, where: str) -> tuple[int, int]:
    """(attention units, MLP channels) to remove from one layer under uniform structure."""
    total, c_cost, n_channels = block_params(parts), channel_cost(parts), parts.intermediate
    target = sparsity * total
    r = heads_to_units(units, heads, units.heads, where) if heads is not None else None
    c = int(channels * n_channels) if channels is not None else None
    if r is None and c is None:
        r = math.floor(sparsity * units.count + 1e-9)
    if c is None:
        c = round((target - r * units.cost) / c_cost)
        if c < 0:
            raise PrunelabError(f"heads={heads} alone removes {r * units.cost / total:.1%} of "
                                f"{where}, more than the target {sparsity:.1%}",
                                "raise --sparsity or lower heads")
    elif r is None:
        r = max(0, round((target - c * c_cost) / units.cost))
    else:
        check_parts_match(sparsity, (r * units.cost + c * c_cost) / total, heads, channels)
    if r >= units.count:
        raise PrunelabError(f"the target {sparsity:.1%} would remove every attention head of "
                            f"{where}", "lower the target, or give channels= a larger share")
    if c >= n_channels:
        raise PrunelabError(f"the target {sparsity:.1%} would remove every MLP channel of "
                            f"{where}", "lower the target, or give heads= a larger share")
    return r, c


def check_parts_match(sparsity: float, achieved: float, heads, channels) -> None:
    if abs(achieved - sparsity) > 0.01:
        raise PrunelabError(f"heads={heads} and channels={channels} remove {achieved:.3f} of "
                            f"the block parameters, not the {sparsity} asked",
                            f"give --sparsity {achieved:.3f}, or leave out heads or channels")


def lowest_channels(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The indices kept once the `count` lowest scores go (stable: ties go in index order)."""
    order = torch.sort(scores.to(torch.float32), stable=True).indices
    return torch.sort(order[count:]).values


def head_channel_sum(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    return channel_scores.reshape(-1, head_dim).sum(dim=1)


@dataclass
class BlockCut:
    """What to keep of one block, and the bias compensation to add (or None)."""

    keep_heads: torch.Tensor
    keep_kv: torch.Tensor
    keep_channels: torch.Tensor
    attention_bias: torch.Tensor | None = None
    mlp_bias: torch.Tensor | None = None


def apply_cut(parts: structure.BlockParts, cut: BlockCut, where: str) -> None:
    structure.shrink_attention(parts, cut.keep_heads, cut.keep_kv, cut.attention_bias, where)
    structure.shrink_mlp(parts, cut.keep_channels, cut.mlp_bias, where)


class StructuredMethod(PruningMethod):
    """A method that removes heads and channels: it checks the model first, cuts whole
    blocks, and writes the config the saved directory needs at the end."""

    Config = StructuredConfig
    supports_nm = False

    uniform: bool = True  # every layer loses the same units (else: the method's plan)

    def layer_shares(self, n_layers: int, sparsity: float) -> list[float]:
        """The share of each layer to remove under uniform structure (SEAP varies it)."""
        return [sparsity] * n_layers

    def check_model(self, model: nn.Module, sparsity: float | None = None,
                    pattern=None) -> None:
        self._parts_path = arch.find_blocks(model).path
        all_parts = structure.model_parts(model)
        shares = self.layer_shares(len(all_parts), sparsity) if sparsity is not None else None
        for index, parts in enumerate(all_parts):
            units, where = attention_units(parts, self.config.gqa), f"{self._parts_path}.{index}"
            if self.config.heads is not None:
                heads_to_units(units, self.config.heads, parts.heads, where)
            if shares is not None and self.uniform:
                uniform_counts(parts, units, shares[index], self.config.heads,
                               self.config.channels, where)
        if sparsity is not None and not self.uniform:
            # Adaptive: each layer keeps one attention unit and one channel.
            most = sum((u.count - 1) * u.cost + (p.intermediate - 1) * channel_cost(p)
                       for p in all_parts for u in [attention_units(p, self.config.gqa)])
            total = sum(block_params(p) for p in all_parts)
            if sparsity - most / total > 0.02:
                raise PrunelabError(f"the target {sparsity:.1%} cannot be met while every layer "
                                    f"keeps an attention head and an MLP channel (at most "
                                    f"{most / total:.1%})", "lower the target")

    def finish(self, model: nn.Module) -> None:
        structure.write_config(model)

    @staticmethod
    def block_index(targets) -> int:
        """The block's index, from any of its targets' full names ("model.layers.3.mlp...")."""
        name = next(iter(targets.values())).name
        path = name.split(".")
        return next(int(p) for p in path if p.isdigit())

    def uniform_cut(self, parts: structure.BlockParts, head_scores: torch.Tensor,
                    channel_scores: torch.Tensor, sparsity: float, where: str) -> BlockCut:
        units = attention_units(parts, self.config.gqa)
        r, c = uniform_counts(parts, units, sparsity, self.config.heads, self.config.channels,
                              where)
        order, _ = units.order(head_scores)
        keep_heads, keep_kv = units.keep_after(order, r)
        return BlockCut(keep_heads, keep_kv, lowest_channels(channel_scores, c))


class _OutputColumnScored(StructuredMethod):
    """Scores from the columns of o_proj and down_proj; uniform structure."""

    def column_scores(self, layer: nn.Linear, stats) -> torch.Tensor:
        raise NotImplementedError

    def prune_block(self, block, layers, stats, targets):
        where = f"{self._parts_path}.{self.block_index(targets)}"
        parts = structure.locate(block, where=where)
        o_name = f"{parts.attention_path}.o_proj"
        down_name = f"{parts.mlp_path}.down_proj"
        head_scores = head_channel_sum(
            self.column_scores(parts.attention.o_proj, stats.get(o_name)), parts.head_dim)
        channel_scores = self.column_scores(parts.mlp.down_proj, stats.get(down_name))
        sparsity = targets[o_name].sparsity
        apply_cut(parts, self.uniform_cut(parts, head_scores, channel_scores, sparsity, where),
                  where)
        return {}


@register
class MagnitudeSP(_OutputColumnScored):
    name = "magnitude-sp"
    summary = "structured: drop heads/channels whose output-projection columns are smallest"

    def column_scores(self, layer, stats):
        return torch.linalg.vector_norm(layer.weight.to(torch.float32), dim=0)


@register
class WandaSP(_OutputColumnScored):
    name = "wanda-sp"
    cost = MethodCost(passes=2.5)
    summary = "structured: drop heads/channels by mean |W|·‖X‖₂ of their output columns"
    statistics = ("input_sq_sum",)

    def column_scores(self, layer, stats):
        norms = stats["input_sq_sum"].to(torch.float32).sqrt()
        return (layer.weight.to(torch.float32).abs() * norms[None, :]).mean(dim=0)
