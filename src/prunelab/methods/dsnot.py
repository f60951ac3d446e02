"""DSnoT, training-free mask refinement (Zhang et al., ICLR 2024; zyxxmu/DSnoT).

Runs after any `base` method: the base decides a layer's mask, then each output row swaps
pruned and kept weights, one pair per cycle, to shrink the expected reconstruction error of
that row, err = Σ_{j pruned} W_ij · E[x_j] (the output the pruned weights take away, for an
input at its mean). Per cycle and row, as the reference code does it:
- grow: if err > 0, the pruned weight of largest W_ij·E[x_j] / Var(x_j) (it gives back the
  most with the least variance), else the one of smallest (most negative);
- prune: if err > 0, among kept weights with W_ij·E[x_j] < 0 the one of lowest Wanda score,
  else among those with W_ij·E[x_j] > 0; with N:M, the kept weight of lowest Wanda score in
  the grown weight's group of M, so the pattern holds;
- a row stops for good once |err| ≤ update_threshold (and, with same_sign or N:M, once a
  swap would flip the sign of err); all stop after max_cycles.
Defaults are the reference's README command: 50 cycles, threshold 0.1, Var to the power 1,
MLP layers skipped (its `--skip_layer mlp` default), and the sign check off for unstructured
masks (its `--without_same_sign` is an always-true `type=bool` flag) but on for N:M.

Scale, as in the reference: E[x_j] is taken as its running mean over windows of each
window's Σ_t x_j, i.e. tokens-per-window × the mean, which sets what the threshold means.
Var(x_j) is the variance over all calibration tokens (the reference averages each window's
own variance; the difference is the spread of the window means).

With a base that also updates weights (SparseGPT), the refined layer keeps the base's values
for weights that stay, and a regrown weight gets its dense value back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods.base import LayerDecision, MethodCost, register, working_copy
from prunelab.methods.masks import NMPattern
from prunelab.methods.wrapping import WrappingConfig, WrappingMethod


@dataclass
class DSnoTConfig(WrappingConfig):
    max_cycles: int = field(default=50, metadata={"help": "most swaps per row"})
    update_threshold: float = field(default=0.1, metadata={
        "help": "a row stops once its |expected error| is at most this"})
    var_power: float = field(default=1.0, metadata={
        "help": "growing divides W·E[x] by Var(x) to this power (0: not at all)"})
    skip: str = field(default="mlp", metadata={
        "help": "comma-separated prefixes of in-block layer names left as the base pruned "
                "them ('' refines every layer)"})
    same_sign: bool = field(default=False, metadata={
        "help": "unstructured: also stop a row when a swap would flip its error's sign"})

    def validate(self) -> None:
        if self.max_cycles < 0:
            raise PrunelabError(f"DSnoT option max_cycles={self.max_cycles} is negative",
                                "e.g. --option max_cycles=50")
        if not (math.isfinite(self.update_threshold) and self.update_threshold >= 0):
            raise PrunelabError(f"DSnoT option update_threshold={self.update_threshold} is not "
                                "a non-negative number", "e.g. --option update_threshold=0.1")
        if not math.isfinite(self.var_power):
            raise PrunelabError(f"DSnoT option var_power={self.var_power} is not a number",
                                "e.g. --option var_power=1")


def _ordered(keys: torch.Tensor, eligible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the positions of eligible entries by ascending key, and how many there are."""
    order = torch.sort(torch.where(eligible, keys, torch.full_like(keys, math.inf)), dim=1,
                       stable=True).indices
    return order, eligible.sum(dim=1)


def dsnot_refine(weight: torch.Tensor, pruned: torch.Tensor, mean: torch.Tensor,
                 var: torch.Tensor, input_sq_sum: torch.Tensor, *, max_cycles: int = 50,
                 update_threshold: float = 0.1, var_power: float = 1.0,
                 same_sign: bool = False, pattern: NMPattern | None = None) -> torch.Tensor:
    """The refined mask (True = pruned) of `weight` [out, in]. `mean` is E[x] in the scale the
    threshold is meant for (see the module docstring); `pruned` is not modified."""
    pruned = pruned.clone()
    rows, cols = weight.shape
    device = weight.device
    row_index = torch.arange(rows, device=device)
    expected = weight * mean.to(weight.dtype).unsqueeze(0)  # W_ij · E[x_j]
    error = (expected * pruned).sum(dim=1)
    initial_sign = torch.sign(error)
    grow_key = expected
    if var_power:
        grow_key = expected / var.to(weight.dtype).clamp_min(1e-12).pow(var_power).unsqueeze(0)
    # Growing: pruned weights, largest key first (for err > 0) or smallest first (err ≤ 0).
    grow_up, n_grow_up = _ordered(-grow_key, pruned & (expected > 0))
    grow_down, n_grow_down = _ordered(grow_key, pruned & (expected < 0))
    wanda = weight.abs() * torch.sqrt(input_sq_sum.to(weight.dtype)).unsqueeze(0)
    if pattern is None:
        prune_neg, n_prune_neg = _ordered(wanda, ~pruned & (expected < 0))
        prune_pos, n_prune_pos = _ordered(wanda, ~pruned & (expected > 0))
    else:
        # Which kept weights may still be pruned: not those grown back (nor, per the
        # reference, those pruned by a swap, which the pattern never picks again).
        prunable_score = torch.where(pruned, math.inf, wanda)
    # grow up, grow down, prune -, prune +
    pointers = torch.zeros(rows, 4, dtype=torch.long, device=device)
    active = torch.ones(rows, dtype=torch.bool, device=device)
    for _ in range(max_cycles):
        active &= error.abs() > update_threshold
        if not active.any():
            break
        positive = error > 0
        up, down = pointers[:, 0], pointers[:, 1]
        grow = torch.where(positive, grow_up[row_index, up.clamp(max=cols - 1)],
                           grow_down[row_index, down.clamp(max=cols - 1)])
        valid = torch.where(positive, up < n_grow_up, down < n_grow_down)
        if pattern is None:
            neg, pos = pointers[:, 2], pointers[:, 3]
            cut = torch.where(positive, prune_neg[row_index, neg.clamp(max=cols - 1)],
                              prune_pos[row_index, pos.clamp(max=cols - 1)])
            valid &= torch.where(positive, neg < n_prune_neg, pos < n_prune_pos)
        else:
            start = grow - grow % pattern.m
            group = start.unsqueeze(1) + torch.arange(pattern.m, device=device).unsqueeze(0)
            cut = start + prunable_score.gather(1, group).argmin(dim=1)
            valid &= torch.isfinite(prunable_score[row_index, cut])
        change = expected[row_index, cut] - expected[row_index, grow]
        if same_sign or pattern is not None:
            active &= ~valid | (torch.sign(error + change) == initial_sign)
        swap = active & valid
        pruned[row_index[swap], cut[swap]] = True
        pruned[row_index[swap], grow[swap]] = False
        error += torch.where(swap, change, torch.zeros_like(change))
        if pattern is not None:
            prunable_score[row_index[swap], cut[swap]] = math.inf
        # Each list's pointer moves past the entry this cycle looked at.
        pointers[:, 0] += positive
        pointers[:, 1] += ~positive
        if pattern is None:
            pointers[:, 2] += positive
            pointers[:, 3] += ~positive
    return pruned


@register
class DSnoT(WrappingMethod):
    name = "dsnot"
    cost = MethodCost(passes=0.3)  # on top of its base
    summary = ("training-free mask refinement after a base method (base=...): swap pruned and "
               "kept weights to shrink the expected reconstruction error")
    Config = DSnoTConfig
    extra_statistics = ("input_sq_sum", "input_mean_var")

    def plan(self, context):
        self._tokens_per_window = context.windows[1] if context.windows else 1
        return super().plan(context)

    def _skipped(self, name: str) -> bool:
        prefixes = [p.strip() for p in self.config.skip.split(",") if p.strip()]
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    def prune_block(self, block, layers, stats, targets, **inputs):
        for name, decision in _pairs(super().prune_block(block, layers, stats, targets,
                                                         **inputs)):
            if decision.pruned is None or self._skipped(name):
                yield name, decision
                continue
            dense = working_copy(layers[name])  # not yet written: the engine writes on yield
            current = torch.where(decision.pruned, dense, decision.weight.to(dense.dtype))
            moments = stats[name]["input_mean_var"]
            refined = dsnot_refine(
                current, decision.pruned, moments.mean * self._tokens_per_window, moments.var,
                stats[name]["input_sq_sum"], max_cycles=self.config.max_cycles,
                update_threshold=self.config.update_threshold,
                var_power=self.config.var_power, same_sign=self.config.same_sign,
                pattern=targets[name].pattern)
            swaps = int((refined & ~decision.pruned).sum())
            yield name, LayerDecision(current, refined, {**decision.notes, "dsnot_swaps": swaps})


def _pairs(decisions):
    return decisions.items() if hasattr(decisions, "items") else decisions
