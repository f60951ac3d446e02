"""Wanda (Sun, Liu, Bair, Kolter 2023): prune by |W_ij| · ‖X_j‖₂, compared within each row.

‖X_j‖₂ is the norm of input feature j over all calibration tokens. The reference code keeps
a running mean of squared norms over samples; it differs from our sum by a constant factor,
so the ranking, and therefore the mask, is the same.
"""

from __future__ import annotations

import torch

from prunelab.methods import masks
from prunelab.methods.base import LayerDecision, MethodCost, PruningMethod, register


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    return weight.abs().mul_(torch.sqrt(input_sq_sum.to(weight.dtype)).unsqueeze(0))


@register
class Wanda(PruningMethod):
    name = "wanda"
    cost = MethodCost(passes=2.5)
    summary = "|W|·‖X‖₂, lowest per output row (N:M: lowest per group)"
    statistics = ("input_sq_sum",)

    def prune_layer(self, weight, stats, target):
        scores = wanda_scores(weight, stats["input_sq_sum"])
        return LayerDecision(weight, masks.select(scores, target.sparsity, target.pattern,
                                                  per_row=True))
