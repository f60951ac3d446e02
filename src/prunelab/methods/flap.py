"""FLAP (An et al., AAAI 2024): fluctuation-based structured pruning with bias compensation.

One dense pass gathers, per input channel j of the attention output projection (o_proj) and
the MLP down projection, the mean and variance of x_j over all calibration tokens. Nothing
is re-run on pruned blocks: every decision comes from the dense model (FLAP's code feeds each
block the dense block's outputs).

Channel metric, as in the reference code:
- IFV  = Var(x_j)
- WIFV = Var(x_j) · ‖W[:, j]‖²   (default)
- WIFN = mean_i |W_ij| · sqrt(mean x_j²)
For o_proj the code squares the metric before grouping channels into heads; we do too.

Structure:
- UL-UM: every layer loses the same share (the rules of `methods/structured.py`); a head
  scores the sum of its channels.
- AL-AM: per layer, standardise the channel metrics (minus the layer's mean, over its
  standard deviation); a head scores the mean of its standardised channels and a
  grouped-attention unit the mean of its heads. All units of all layers are pooled and the
  lowest removed while the parameters removed get nearest the target, each unit weighing its
  parameter count (FLAP: 512/3 channels per head of LLaMA-7B, the same ratio). Unlike FLAP,
  each layer keeps its best attention unit and MLP channel: transformers cannot run an
  attention with no head.
Bias compensation (`bias=true`): the output projection's bias gains W[:, removed] ·
mean(x[removed]), the removed channels' average contribution, so the block's mean output is
kept. Where the model has no such bias it is added; `prunelab.structure` records it so the
saved directory rebuilds it.

Reference-code differences kept out: its running variance aliases the old and new means (an
in-place update), so it is not the variance; we use the exact variance over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prunelab import structure
from prunelab.errors import PrunelabError
from prunelab.methods.base import MethodCost, PlanContext, register
from prunelab.methods.structured import (BlockCut, StructuredConfig, StructuredMethod,
                                         apply_cut, attention_units, block_params,
                                         channel_cost, check_parts_match, head_channel_sum)


@dataclass
class FlapConfig(StructuredConfig):
    metric: Literal["WIFV", "IFV", "WIFN"] = field(default="WIFV", metadata={
        "help": "channel importance: weighted input variance, input variance, weighted norm"})
    structure: Literal["AL-AM", "UL-UM"] = field(default="AL-AM", metadata={
        "help": "adaptive across layers and modules, or uniform"})
    bias: bool = field(default=True, metadata={
        "help": "add the removed channels' mean contribution to the output bias"})


def channel_metric(metric: str, weight: torch.Tensor, stats) -> torch.Tensor:
    """FLAP's importance of each input channel of an output projection `weight` [out, in]."""
    # on the statistics' device (the engine's), which a model kept elsewhere may not share
    weight = weight.to(stats["input_mean_var"].var.device, torch.float32)
    if metric == "WIFN":
        mean_sq = stats["input_sq_sum"].to(torch.float32) / max(stats.n_tokens, 1)
        return (weight.abs() * mean_sq.sqrt()[None, :]).mean(dim=0)
    variance = stats["input_mean_var"].var.to(torch.float32)
    if metric == "IFV":
        return variance
    return variance * weight.pow(2).sum(dim=0)


def standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def remove_by_cost(scores: torch.Tensor, costs: torch.Tensor, budget: float) -> torch.Tensor:
    """Mask of the lowest-scoring entries whose summed cost comes nearest `budget` (a stable
    sort: among equal scores the earlier entry goes first). Small vectors: the choice is made
    on the CPU, wherever the scores were computed."""
    scores, costs = scores.cpu(), costs.cpu()
    order = torch.sort(scores, stable=True).indices
    reached = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum(costs[order].to(torch.float64), 0)])
    count = int(torch.argmin((reached - budget).abs()))
    removed = torch.zeros(len(scores), dtype=torch.bool)
    removed[order[:count]] = True
    return removed


@register
class Flap(StructuredMethod):
    name = "flap"
    cost = MethodCost(passes=1.0)
    summary = "structured: heads/channels by input fluctuation, bias compensation (FLAP)"
    Config = FlapConfig

    def __init__(self, config):
        super().__init__(config)
        self.planning_statistics = (("input_mean_var", "input_sq_sum")
                                    if config.metric == "WIFN" else ("input_mean_var",))

    @property
    def uniform(self) -> bool:
        return self.config.structure == "UL-UM"

    def check_model(self, model, sparsity=None, pattern=None):
        super().check_model(model, sparsity, pattern)
        self._parts = structure.model_parts(model)

    def plan(self, context: PlanContext):
        prefix = self._parts_path
        heads, channels, means = [], [], []
        for i, parts in enumerate(self._parts):
            o = f"{prefix}.{i}.{parts.attention_path}.o_proj"
            down = f"{prefix}.{i}.{parts.mlp_path}.down_proj"
            o_stats, down_stats = context.statistics[o], context.statistics[down]
            attention = channel_metric(self.config.metric, context.weights[o], o_stats) ** 2
            mlp = channel_metric(self.config.metric, context.weights[down], down_stats)
            if not self.uniform:
                attention = standardise(attention).reshape(-1, parts.head_dim).mean(dim=1)
                mlp = standardise(mlp)
            else:
                attention = head_channel_sum(attention, parts.head_dim)
            heads.append(attention)
            channels.append(mlp)
            means.append((o_stats["input_mean_var"].mean, down_stats["input_mean_var"].mean))
        self._means = means if self.config.bias else None
        if self.uniform:
            shares = self.layer_shares(len(self._parts), context.sparsity)
            self._cuts = [self.uniform_cut(parts, h, c, share, f"{prefix}.{i}")
                          for i, (parts, h, c, share)
                          in enumerate(zip(self._parts, heads, channels, shares))]
        else:
            self._cuts = self._adaptive_cuts(heads, channels, context.sparsity)
        return None

    def _adaptive_cuts(self, head_scores, channel_scores, sparsity) -> list[BlockCut]:
        """AL-AM: pool every removable unit of the model; each layer keeps its best unit of
        attention and its best channel (they are left out of the pool)."""
        config, parts_list = self.config, self._parts
        # pooled and sorted on the CPU, where the costs and layer indices are built
        head_scores = [h.cpu() for h in head_scores]
        channel_scores = [c.cpu() for c in channel_scores]
        units = [attention_units(p, config.gqa) for p in parts_list]
        orders = [u.order(h) for u, h in zip(units, head_scores)]
        # Attention pool: every unit but each layer's last (best); channel pool likewise.
        a_layer = torch.tensor([i for i, u in enumerate(units) for _ in range(u.count - 1)],
                               dtype=torch.long)
        a_scores = torch.cat([s[:-1] for _, s in orders])
        a_costs = torch.tensor([u.cost for u in units for _ in range(u.count - 1)],
                               dtype=torch.float64)
        a_heads = torch.tensor([u.heads_per_unit for u in units for _ in range(u.count - 1)],
                               dtype=torch.float64)
        c_sorted = [torch.sort(c.to(torch.float32), stable=True) for c in channel_scores]
        c_layer = torch.cat([torch.full((len(c) - 1,), i, dtype=torch.long)
                             for i, c in enumerate(channel_scores)])
        c_scores = torch.cat([s.values[:-1] for s in c_sorted])
        c_costs = torch.cat([torch.full((len(c) - 1,), float(channel_cost(p)),
                                        dtype=torch.float64)
                             for p, c in zip(parts_list, channel_scores)])
        total = sum(block_params(p) for p in parts_list)
        budget = sparsity * total
        total_heads = sum(p.heads for p in parts_list)
        if config.heads is not None:
            a_removed = remove_by_cost(a_scores, a_heads, config.heads * total_heads)
        if config.channels is not None:
            c_removed = torch.zeros(len(c_scores), dtype=torch.bool)
            c_removed[torch.sort(c_scores, stable=True).indices[
                :int(config.channels * sum(p.intermediate for p in parts_list))]] = True
        if config.heads is None and config.channels is None:
            both = remove_by_cost(torch.cat([a_scores, c_scores]),
                                  torch.cat([a_costs, c_costs]), budget)
            a_removed, c_removed = both[:len(a_scores)], both[len(a_scores):]
        elif config.heads is None:
            a_removed = remove_by_cost(a_scores, a_costs,
                                       budget - float(c_costs[c_removed].sum()))
        elif config.channels is None:
            c_removed = remove_by_cost(c_scores, c_costs,
                                       budget - float(a_costs[a_removed].sum()))
        achieved = (float(a_costs[a_removed].sum()) + float(c_costs[c_removed].sum())) / total
        if config.heads is not None and config.channels is not None:
            check_parts_match(sparsity, achieved, config.heads, config.channels)
        elif abs(achieved - sparsity) > 0.02:
            raise PrunelabError(f"the target {sparsity:.1%} cannot be met while every layer "
                                f"keeps an attention head and an MLP channel "
                                f"(at most {achieved:.1%})", "lower the target")
        cuts = []
        c_removed_layer = c_layer[c_removed]
        for i, (u, (order, _), cs) in enumerate(zip(units, orders, c_sorted)):
            removed_units = int((a_layer[a_removed] == i).sum())
            keep_heads, keep_kv = u.keep_after(order, removed_units)
            removed_channels = int((c_removed_layer == i).sum())
            keep = torch.sort(cs.indices[removed_channels:]).values
            cuts.append(BlockCut(keep_heads, keep_kv, keep))
        return cuts

    def prune_block(self, block, layers, stats, targets):
        index = self.block_index(targets)
        where = f"{self._parts_path}.{index}"
        parts = structure.locate(block, where=where)
        cut = self._cuts[index]
        if self._means is not None:
            o_mean, down_mean = self._means[index]
            kept_columns = (cut.keep_heads[:, None] * parts.head_dim
                            + torch.arange(parts.head_dim, device=cut.keep_heads.device)
                            ).reshape(-1)
            cut.attention_bias = structure.removed_mean_contribution(
                parts.attention.o_proj, _complement(kept_columns, parts.heads * parts.head_dim),
                o_mean)
            cut.mlp_bias = structure.removed_mean_contribution(
                parts.mlp.down_proj, _complement(cut.keep_channels, parts.intermediate),
                down_mean)
        apply_cut(parts, cut, where)
        self._cuts[index] = None  # free the indices as we go
        return {}


def _complement(kept: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return torch.nonzero(mask).flatten()
