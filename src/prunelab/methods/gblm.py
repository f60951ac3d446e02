"""GBLM-Pruner (Das, Sun, Ma, Jia 2023; VILA-Lab/GBLM-Pruner): gradients and activations.

Before pruning, the language-modelling loss of each calibration window (labels = inputs, no
masking) gets one backward pass of the dense model; per weight, the gradients' ℓ2 norm over
windows G = sqrt(Σ g²) is accumulated as Σ (100·g)² in fp32 (the reference's scaling, which
keeps the squares of tiny gradients from underflowing) and divided back. Then, block by block
as in Wanda, each row keeps the weights of highest

    score = |W_ij| · ‖X_j‖₂ + α · |W_ij| · G_ij.

Scales follow the reference code, since they decide how much each term counts: ‖X_j‖² is the
running mean over calibration windows of each window's Σ x_j² (our sum over all tokens,
divided by the number of windows), and its G is the norm of 100·g, i.e. α = 100 with the
unscaled G here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods import masks
from prunelab.methods.base import LayerDecision, MethodConfig, MethodCost, PruningMethod, register
from prunelab.methods.statistics import Accumulator, register_statistic

GRADIENT_SCALE = 100.0


@register_statistic
class ScaledGradSqSum(Accumulator):
    """Σ over backward passes of (100·g)², per weight [out, in], in fp32 (GBLM's accumulator:
    the factor keeps the squares of tiny gradients from underflowing)."""

    name = "scaled_grad_sq_sum"
    reads = "weight_grad"

    def __init__(self, width, device):
        super().__init__(width, device)
        self.total = torch.zeros(width, dtype=torch.float32, device=device)

    def update(self, x):
        scaled = x * GRADIENT_SCALE
        self.total.addcmul_(scaled, scaled)

    def result(self):
        return self.total


def gblm_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor, n_windows: int,
                grad_norm: torch.Tensor, alpha: float) -> torch.Tensor:
    """|W|·‖X_j‖₂ + α·|W|·G, ‖X_j‖² as a mean over windows (see the module's docstring)."""
    activation = torch.sqrt(input_sq_sum.to(weight.dtype) / max(n_windows, 1)).unsqueeze(0)
    magnitude = weight.abs()
    return magnitude * activation + alpha * magnitude * grad_norm.to(weight.dtype)


@dataclass
class GBLMConfig(MethodConfig):
    alpha: float = field(default=GRADIENT_SCALE, metadata={
        "help": "weight of the gradient term (the reference's 100 × gradient scale)"})

    def validate(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise PrunelabError(f"GBLM option alpha={self.alpha} is not a non-negative number",
                                "e.g. --option alpha=100")


@register
class GBLM(PruningMethod):
    name = "gblm"
    cost = MethodCost(passes=7.0)  # a backward pass per window
    summary = "|W|·‖X‖₂ + α·|W|·‖∇W‖₂ (LM-loss gradients over the calibration windows), per row"
    Config = GBLMConfig
    statistics = ("input_sq_sum",)
    planning_statistics = ("scaled_grad_sq_sum",)

    def plan(self, context):
        self._n_windows = context.windows[0] if context.windows else 1
        # G = sqrt(Σ (100 g)²) / 100, computed in place: one set of gradient norms is held.
        self._grad_norm = {name: stats["scaled_grad_sq_sum"].sqrt_().div_(GRADIENT_SCALE)
                           for name, stats in context.statistics.items()}
        return None

    def prune_layer(self, weight, stats, target):
        grad_norm = self._grad_norm.pop(target.name).to(weight.device)
        scores = gblm_scores(weight, stats["input_sq_sum"], self._n_windows, grad_norm,
                             self.config.alpha)
        return LayerDecision(weight, masks.select(scores, target.sparsity, target.pattern,
                                                  per_row=True))
