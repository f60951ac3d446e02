"""Magnitude pruning: the baselines, needing no calibration data.

- `magnitude`: per matrix, remove the `int(numel · s)` smallest |W| (the Wanda paper's baseline).
- `magnitude-global`: one threshold over all prunable weights of all blocks, as the Junk DNA
  paper's global magnitude pruning; layers end up with different sparsities.
- `magnitude-band`: remove only the weights whose |W| rank within each matrix falls in the
  quantile band [band_low, band_low + s): the "nested junk" probe of which band of small
  weights carries what.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods import masks
from prunelab.methods.base import (LayerDecision, LayerStats, LayerTarget, MethodConfig,
                                   PlanContext, PruningMethod, register)


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    summary = "|W|, lowest per matrix (N:M: lowest per group)"

    def prune_layer(self, weight, stats, target):
        return LayerDecision(weight, masks.select(weight.abs(), target.sparsity, target.pattern,
                                                  per_row=False))


@register
class GlobalMagnitude(PruningMethod):
    name = "magnitude-global"
    summary = "|W|, one threshold over all prunable weights of the model"
    sets_layer_sparsities = True

    def plan(self, context: PlanContext):
        self._plan: dict[str, tuple[float, int]] = {}
        if context.pattern is not None:
            return None  # N:M is decided per group; a global threshold has no meaning there
        layers, sparsity = context.weights, context.sparsity
        total = sum(w.numel() for w in layers.values())
        k = int(total * sparsity)
        threshold = _kth_smallest_abs(list(layers.values()), k)
        # Ties at the threshold are taken in layer order until exactly k weights are pruned.
        ties_left = k - sum(int((w.abs() < threshold).sum()) for w in layers.values())
        for name, w in layers.items():
            ties_here = int((w.abs() == threshold).sum())
            take = max(0, min(ties_left, ties_here))
            self._plan[name] = (threshold, take)
            ties_left -= take
        return None

    def prune_layer(self, weight, stats, target):
        if target.pattern is not None:
            return LayerDecision(weight, masks.lowest_n_of_m(weight.abs(), target.pattern))
        threshold, ties = self._plan[target.name]
        magnitude = weight.abs()
        pruned = magnitude < threshold
        if ties:
            tie_positions = torch.nonzero((magnitude == threshold).flatten()).flatten()[:ties]
            pruned.view(-1)[tie_positions] = True
        return LayerDecision(weight, pruned, {"threshold": float(threshold)})


def _kth_smallest_abs(matrices: list[torch.Tensor], k: int) -> float:
    """The value v such that exactly the k smallest |w| are ≤ v (ties may exceed k).

    Found by bisection over the bit patterns of non-negative float32 (whose integer order is
    their numeric order), so no concatenated copy of all weights is ever made.
    """
    if k <= 0:
        return -1.0  # nothing is below it
    lo, hi = 0, 0x7F800000  # 0.0 .. +inf as int32 bit patterns

    def count_at_most(bits: int) -> int:
        value = torch.tensor(bits, dtype=torch.int32).view(torch.float32)
        return sum(int((m.abs() <= value).sum()) for m in matrices)

    while lo < hi:
        mid = (lo + hi) // 2
        if count_at_most(mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    return float(torch.tensor(lo, dtype=torch.int32).view(torch.float32))


@dataclass
class BandConfig(MethodConfig):
    band_low: float = field(default=0.0, metadata={
        "help": "lower edge of the |W| rank quantile band to prune, in [0, 1)"})
    band_high: float | None = field(default=None, metadata={
        "help": "upper edge (default band_low + sparsity)"})

    def validate(self) -> None:
        high = 1.0 if self.band_high is None else self.band_high
        if not 0 <= self.band_low < high <= 1:
            raise PrunelabError(f"magnitude band [{self.band_low}, {self.band_high}) is not "
                                "within [0, 1] with band_low < band_high",
                                "give 0 ≤ band_low < band_high ≤ 1")


@register
class MagnitudeBand(PruningMethod):
    name = "magnitude-band"
    summary = "prune only the |W| rank band [band_low, band_low + s) of each matrix"
    Config = BandConfig
    supports_nm = False

    def prune_layer(self, weight, stats: LayerStats, target: LayerTarget):
        low = self.config.band_low
        high = self.config.band_high if self.config.band_high is not None else low + target.sparsity
        if not 0 <= low < high <= 1 or abs((high - low) - target.sparsity) > 1e-9:
            raise PrunelabError(
                f"magnitude band [{low}, {high}) does not match sparsity {target.sparsity}",
                "give band_low and a sparsity with band_low + sparsity ≤ 1",
            )
        n = weight.numel()
        order = torch.sort(weight.abs().flatten(), stable=True).indices
        pruned = torch.zeros(n, dtype=torch.bool, device=weight.device)
        pruned[order[int(n * low): int(n * high)]] = True
        return LayerDecision(weight, pruned.view_as(weight))
