"""OWL, outlier-weighted layerwise sparsity (Yin et al. 2023; luuyin/OWL).

Before pruning, one pass over the dense model gives every decoder block its outlier ratio:
the share of the Wanda scores |W_ij|·‖X_j‖₂ of all the block's linears that exceed M times
their mean (one mean over the whole block, as the reference code concatenates the block's
scores). Ratios are mapped linearly onto [0, 2λ] (D_b), and block b gets sparsity
S + mean(D) − D_b: more outliers, fewer weights pruned. The mean is weighted by parameter
count, so the model's sparsity is exactly S (the reference takes the plain mean over blocks,
which is the same thing when, as in every zoo model, the blocks are equal in size). Then the
`base` method prunes each layer at its block's sparsity.

N:M: block b prunes p_b of every M, p_b = M · its sparsity rounded so that the parameter-
weighted mean of p_b stays M · S (largest remainders), and keeps N_b = M − p_b. With M = 4
and λ = 0.08 every p_b rounds to the uniform value; the reference's N:M script uses a λ in
units of whole weights per group (`--Lamda 2` for 8-groups), i.e. λ = 0.25 here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods.base import LayerTarget, MethodCost, register
from prunelab.methods.masks import NMPattern
from prunelab.methods.wanda import wanda_scores
from prunelab.methods.wrapping import WrappingConfig, WrappingMethod, layer_blocks


@dataclass
class OWLConfig(WrappingConfig):
    m: float = field(default=5.0, metadata={
        "help": "a score is an outlier above m × its block's mean Wanda score"})
    lam: float = field(default=0.08, metadata={
        "help": "block sparsities spread over [S − lam, S + lam]"})

    def validate(self) -> None:
        if not (math.isfinite(self.m) and self.m > 0):
            raise PrunelabError(f"OWL option m={self.m} is not a positive number",
                                "e.g. --option m=5")
        if not (math.isfinite(self.lam) and 0 <= self.lam < 1):
            raise PrunelabError(f"OWL option lam={self.lam} is outside [0, 1)",
                                "e.g. --option lam=0.08")


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """The share of all entries of `scores` above m × their common mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / total
    return sum(int((s > m * mean).sum()) for s in scores) / total


def owl_sparsities(ratios: list[float], sizes: list[int], sparsity: float,
                   lam: float) -> list[float]:
    """Block sparsities from outlier ratios: ratios mapped onto D ∈ [0, 2λ], then
    S + mean(D) − D, the mean weighted by `sizes`."""
    low, high = min(ratios), max(ratios)
    spread = [(r - low) / (high - low) * 2 * lam if high > low else 0.0 for r in ratios]
    mean = sum(d * n for d, n in zip(spread, sizes)) / sum(sizes)
    return [sparsity + mean - d for d in spread]


def nm_pruned_counts(sparsities: list[float], sizes: list[int], m: int,
                     target: float) -> list[int]:
    """Weights to prune per group of `m` in each block: m · sparsity rounded down, then one
    more for the blocks with the largest remainders while the size-weighted mean stays at or
    below m · target."""
    exact = [s * m for s in sparsities]
    counts = [math.floor(x + 1e-9) for x in exact]
    budget = m * target * sum(sizes) - sum(c * n for c, n in zip(counts, sizes))
    for b in sorted(range(len(counts)), key=lambda b: (-(exact[b] - counts[b]), b)):
        if budget + 1e-9 >= sizes[b]:
            counts[b] += 1
            budget -= sizes[b]
    return counts


@register
class OWL(WrappingMethod):
    name = "owl"
    cost = MethodCost(passes=2.5)  # on top of its base
    summary = ("outlier-weighted layerwise sparsity: block sparsities from Wanda-score "
               "outliers, then a base method (base=wanda|sparsegpt|magnitude|...)")
    Config = OWLConfig
    extra_planning_statistics = ("input_sq_sum",)
    sets_layer_sparsities = True

    def check_request(self, sparsity, pattern):
        super().check_request(sparsity, pattern)
        lam = self.config.lam
        if sparsity - lam < 0 or sparsity + lam >= 1:
            raise PrunelabError(f"OWL with lam={lam} spreads block sparsities over "
                                f"[{sparsity - lam:.3f}, {sparsity + lam:.3f}], outside [0, 1)",
                                f"choose lam below {min(sparsity, 1 - sparsity):.3f}")
        if pattern is not None:
            low = round(pattern.m * (sparsity - lam))
            high = round(pattern.m * (sparsity + lam))
            if low < 1 or high > pattern.m - 1:
                raise PrunelabError(
                    f"OWL with lam={lam} and pattern {pattern} would prune {low} to {high} of "
                    f"every {pattern.m} weights in some block; N:M needs 1 to {pattern.m - 1}",
                    "choose a smaller lam")

    def plan(self, context):
        self.base_plan(context, own_targets=True)
        blocks = layer_blocks(context.weights)
        order = sorted(set(blocks.values()))
        ratios, sizes = [], []
        for b in order:
            names = [n for n in context.weights if blocks[n] == b]
            scores = [wanda_scores(context.weights[n].to(
                context.statistics[n]["input_sq_sum"].device, torch.float32),
                context.statistics[n]["input_sq_sum"]) for n in names]
            ratios.append(outlier_ratio(scores, self.config.m))
            sizes.append(sum(context.weights[n].numel() for n in names))
            del scores
        sparsities = owl_sparsities(ratios, sizes, context.sparsity, self.config.lam)
        for b, s in zip(order, sparsities):
            if not 0 <= s < 1:
                raise PrunelabError(f"OWL with lam={self.config.lam} gives block {b} sparsity "
                                    f"{s:.3f}, outside [0, 1)", "choose a smaller lam")
        pattern = context.pattern
        if pattern is not None:
            counts = nm_pruned_counts(sparsities, sizes, pattern.m, pattern.sparsity)
            for b, p in zip(order, counts):
                if not 1 <= p <= pattern.m - 1:
                    raise PrunelabError(
                        f"OWL with lam={self.config.lam} would prune {p} of every {pattern.m} "
                        f"weights in block {b}; pattern {pattern} allows 1 to {pattern.m - 1}",
                        "choose a smaller lam")
            targets = {b: (p / pattern.m, NMPattern(pattern.m - p, pattern.m))
                       for b, p in zip(order, counts)}
        else:
            targets = {b: (s, None) for b, s in zip(order, sparsities)}
        self.ratios = dict(zip(order, ratios))  # kept for reports and tests
        return {name: LayerTarget(name, *targets[blocks[name]]) for name in context.weights}
