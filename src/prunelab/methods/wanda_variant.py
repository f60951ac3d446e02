"""Wanda's variant (Sun et al. 2023, the paper's appendix; `--use_variant` in locuslab/wanda).

Per output row, sort the Wanda scores |W_ij|·‖X_j‖₂ and prune the smallest ones whose
cumulative sum stays within α times the row's total. One α serves the whole layer, found by
bisection so that the layer's sparsity is within 0.001 of the target; rows end up with
different sparsities. The reference starts at α = 0.4 inside [0, 0.8]; we search [0, 1] so
that high sparsities stay reachable, and break ties by position (the reference's `<=`
threshold prunes every score equal to the last one as well).
"""

from __future__ import annotations

import torch

from prunelab.methods.base import LayerDecision, MethodCost, PruningMethod, register
from prunelab.methods.wanda import wanda_scores

TOLERANCE = 0.001


def pruned_for_alpha(sorted_scores: torch.Tensor, order: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """Per row, the smallest scores whose running sum is ≤ α · the row's sum."""
    cumulative = sorted_scores.cumsum(dim=1)
    counts = (cumulative <= alpha * cumulative[:, -1:]).sum(dim=1, keepdim=True)
    in_sorted = torch.arange(order.shape[1], device=order.device).unsqueeze(0) < counts
    pruned = torch.zeros_like(in_sorted)
    pruned.scatter_(1, order, in_sorted)
    return pruned


def variant_mask(scores: torch.Tensor, sparsity: float,
                 tolerance: float = TOLERANCE) -> tuple[torch.Tensor, float]:
    """(pruned mask, α) with the layer's sparsity within `tolerance` of `sparsity` where the
    scores allow it (else the closest bisection reached)."""
    sorted_scores, order = torch.sort(scores, dim=1, stable=True)
    sorted_scores = sorted_scores.to(torch.float64)
    low, high = 0.0, 1.0
    best = None
    for _ in range(60):
        alpha = (low + high) / 2
        pruned = pruned_for_alpha(sorted_scores, order, alpha)
        achieved = pruned.float().mean().item()
        if best is None or abs(achieved - sparsity) < abs(best[2] - sparsity):
            best = (pruned, alpha, achieved)
        if abs(achieved - sparsity) <= tolerance:
            break
        if achieved > sparsity:
            high = alpha
        else:
            low = alpha
    return best[0], best[1]


@register
class WandaVariant(PruningMethod):
    name = "wanda-variant"
    cost = MethodCost(passes=2.6)
    summary = ("Wanda scores; per row prune the smallest whose cumulative sum ≤ α·row sum, "
               "α by bisection (layer within 0.001 of the target)")
    statistics = ("input_sq_sum",)
    supports_nm = False

    def prune_layer(self, weight, stats, target):
        scores = wanda_scores(weight, stats["input_sq_sum"])
        pruned, alpha = variant_mask(scores, target.sparsity)
        return LayerDecision(weight, pruned, {"alpha": alpha})
