"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal-brain-surgeon updates.

For a layer with weight W [out, in] and calibration inputs X, H = (2/N) Σ x xᵀ. Going through
the columns in blocks of 128, the mask is chosen from W² / diag(H⁻¹ factor)², and every pruned
weight's error is spread onto the not-yet-processed columns of its row through the upper
Cholesky factor of H⁻¹ (the sweep in `prunelab.methods.obs`), so that WX changes as little as
possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods import masks
from prunelab.methods.base import (LayerDecision, LayerStats, LayerTarget, MethodConfig,
                                   MethodCost, PruningMethod, register)
from prunelab.methods.masks import NMPattern
from prunelab.methods.obs import (Factors, inverse_hessian_factor,  # noqa: F401
                                  obs_solve, shared_factors)
from prunelab.methods.quant import check_bits, check_group_fits, check_group_size


@dataclass
class SparseGPTConfig(MethodConfig):
    blocksize: int = field(default=128, metadata={"help": "columns decided and updated together"})
    percdamp: float = field(default=0.01, metadata={
        "help": "dampening added to diag(H), as a fraction of its mean"})
    true_sequential: bool = field(default=False, metadata={
        "help": "prune q/k/v, then o, then up/gate, then down, re-collecting inputs in between"})
    max_damp_retries: int = field(default=6, metadata={
        "help": "times to raise dampening ×10 when Cholesky fails, before giving up"})
    bits: int | None = field(default=None, metadata={
        "help": "joint mode: also quantize the kept weights to this many bits, in the same "
                "sweep (none: prune only)"})
    group_size: int | None = field(default=None, metadata={
        "help": "joint mode: input columns per quantization grid (none: per channel)"})
    symmetric: bool = field(default=False, metadata={
        "help": "joint mode: grids symmetric about zero"})

    def validate(self) -> None:
        if self.bits is not None:
            check_bits(self.bits, "SparseGPT joint mode")
        check_group_size(self.group_size, "SparseGPT joint mode")
        if self.blocksize < 1:
            raise PrunelabError(f"SparseGPT option blocksize={self.blocksize} is below 1",
                                "e.g. --option blocksize=128")
        if not (self.percdamp > 0 and math.isfinite(self.percdamp)):
            raise PrunelabError(f"SparseGPT option percdamp={self.percdamp} is not a positive "
                                "finite number", "e.g. --option percdamp=0.01")
        if self.max_damp_retries < 0:
            raise PrunelabError(f"SparseGPT option max_damp_retries={self.max_damp_retries} "
                                "is negative", "e.g. --option max_damp_retries=6")


class _PruneUnstructured:
    """SparseGPT's rule: t_i = 0 where pruned and w_i elsewhere, so e_i = w_i · m_i / U_ii.

    The mask of a block is chosen up front, from W² / U_ii² over the whole rows × block.
    """

    def __init__(self, pruned: torch.Tensor, sparsity: float):
        self.pruned = pruned  # the whole layer's mask, filled block by block
        self.sparsity = sparsity

    def begin_block(self, W1, diag, columns):
        self.mask = masks.lowest_in_matrix(W1 ** 2 / diag.unsqueeze(0) ** 2, self.sparsity)
        self.scale = self.mask / diag

    def column_error(self, i, W1, out):
        torch.mul(W1[:, i], self.scale[:, i], out=out)

    def end_block(self, W1, columns):
        masks.zero_where_(W1, self.mask)
        self.pruned[:, columns] = self.mask


class _PruneNofM(_PruneUnstructured):
    """N:M: each group of M columns is decided when the sweep reaches it, on the weights as
    updated so far, as in the paper."""

    def __init__(self, pruned: torch.Tensor, pattern: NMPattern):
        super().__init__(pruned, pattern.sparsity)
        self.pattern = pattern
        self.align = pattern.m  # a group's columns are read when the sweep reaches its first

    def begin_block(self, W1, diag, columns):
        self.diag = diag
        self.mask = torch.zeros_like(W1, dtype=torch.bool)
        self.scale = torch.zeros_like(W1)

    def column_error(self, i, W1, out):
        if i % self.pattern.m == 0:
            group = slice(i, i + self.pattern.m)
            self.mask[:, group] = masks.lowest_n_of_m(
                W1[:, group] ** 2 / self.diag[group].unsqueeze(0) ** 2, self.pattern)
            self.scale[:, group] = self.mask[:, group] / self.diag[group]
        torch.mul(W1[:, i], self.scale[:, i], out=out)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    pattern: NMPattern | None = None, blocksize: int = 128,
                    percdamp: float = 0.01, max_damp_retries: int = 6,
                    layer: str = "", factors: Factors | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Return (new weight, pruned mask, dampening used). Pure: inputs are not modified
    (`factors` keeps the Hessian's factor for the next layer that shares it)."""
    pruned = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    if pattern is None:
        rule = _PruneUnstructured(pruned, sparsity)
    else:
        rule = _PruneNofM(pruned, pattern)
        # blocks must hold whole groups, or a group would be split
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    new_weight, dead, damp = obs_solve(weight, hessian, rule, blocksize=blocksize,
                                       percdamp=percdamp, max_damp_retries=max_damp_retries,
                                       layer=layer, label="SparseGPT", factors=factors)
    pruned[:, dead] = True  # zeroed by obs_solve, whatever the mask said
    return new_weight, pruned, damp


@register
class SparseGPT(PruningMethod):
    name = "sparsegpt"
    cost = MethodCost(passes=3.0, seconds_per_mparam=0.1)
    summary = "OBS weight updates via the Cholesky factor of H⁻¹, mask per rows × 128 block"
    statistics = ("hessian",)
    Config = SparseGPTConfig

    def sequential_groups(self) -> bool:
        return self.config.true_sequential

    def prune_block(self, block, layers, stats, targets):
        with shared_factors(self):
            yield from super().prune_block(block, layers, stats, targets)

    def check_model(self, model, sparsity=None, pattern=None) -> None:
        if self.config.bits is not None:
            from prunelab import arch

            for name, layer in arch.named_prunable_layers(model).items():
                check_group_fits(self.config.group_size, arch.weight_matrix(layer).shape[1],
                                 name)

    def prune_layer(self, weight, stats: LayerStats, target: LayerTarget):
        if self.config.bits is not None:
            return self._prune_and_quantize(weight, stats["hessian"], target)
        new_weight, pruned, damp = sparsegpt_prune(
            weight, stats["hessian"], target.sparsity, target.pattern, self.config.blocksize,
            self.config.percdamp, self.config.max_damp_retries, target.name,
            factors=getattr(self, "factors", None))
        return LayerDecision(new_weight, pruned, {"percdamp_used": damp})

    def _prune_and_quantize(self, weight, hessian, target: LayerTarget) -> LayerDecision:
        """The paper's joint mode: in one sweep, each block's mask is chosen as above and every
        kept weight is rounded to its grid (GPTQ's rule, `prunelab.methods.gptq`); pruned
        weights take 0, which is on every grid."""
        from prunelab.methods.gptq import gptq_quantize

        c = self.config
        pruned = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
        pattern = target.pattern
        rule = (_PruneUnstructured(pruned, target.sparsity) if pattern is None
                else _PruneNofM(pruned, pattern))
        new_weight, quantized, dead, damp = gptq_quantize(
            weight, hessian, c.bits, c.group_size, c.symmetric, blocksize=c.blocksize,
            percdamp=c.percdamp, prune=rule, align=pattern.m if pattern else 1,
            max_damp_retries=c.max_damp_retries, layer=target.name, label="SparseGPT",
            factors=getattr(self, "factors", None))
        pruned[:, dead] = True
        return LayerDecision(new_weight, pruned, {"percdamp_used": damp, "bits": c.bits},
                             quantized=quantized)
