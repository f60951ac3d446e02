"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023): quantization with error feedback.

The columns of a layer are quantized one by one in the optimal-brain-surgeon sweep that
SparseGPT uses (`prunelab.methods.obs`: the same Hessian H = (2/N) Σ x xᵀ, dead-input rule,
dampening and upper Cholesky factor of H⁻¹, lazy batches of 128 columns); the rule here sets
each column to its grid value and the sweep spreads the rounding error onto the columns not
yet quantized. Grids (`prunelab.methods.quant`) are per output channel, found on the whole
row before the sweep, or per group of input columns, found when the sweep reaches the group
(on the block's weights as they stood when the block began, as in the reference code). With
act-order the columns go by decreasing diag H; static groups fix every group's grid before
the sweep, so the saved scales stay in column order. SparseGPT's joint mode
(`--method sparsegpt --option bits=4`) passes its pruning rule in: pruned weights take the
target 0, which is on every grid, so they stay exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods.base import LayerDecision, LayerStats, LayerTarget, MethodCost, register
from prunelab.methods.obs import ColumnRule, Factors, obs_solve, shared_factors
from prunelab.methods.quant import QuantizedWeight, grid
from prunelab.methods.rtn import QuantConfig, Quantizer


@dataclass
class GPTQConfig(QuantConfig):
    blocksize: int = field(default=128, metadata={
        "help": "columns per lazy batch update"})
    percdamp: float = field(default=0.01, metadata={
        "help": "dampening added to diag(H), as a fraction of its mean"})
    act_order: bool = field(default=False, metadata={
        "help": "quantize columns by decreasing diag(H) (activation order)"})
    static_groups: bool = field(default=True, metadata={
        "help": "with act_order: fix every group's grid before the sweep, so scales stay in "
                "column order (false: grids in sweep order, with a column-to-group index)"})
    keep_zeros: bool = field(default=True, metadata={
        "help": "weights that are exactly zero (pruned) stay zero, as pruned ones do"})
    true_sequential: bool = field(default=False, metadata={
        "help": "quantize q/k/v, then o, then up/gate, then down, re-collecting inputs"})
    max_damp_retries: int = field(default=6, metadata={
        "help": "times to raise dampening ×10 when Cholesky fails, before giving up"})

    def validate(self) -> None:
        super().validate()
        if self.blocksize < 1:
            raise PrunelabError(f"GPTQ option blocksize={self.blocksize} is below 1",
                                "e.g. --option blocksize=128")
        if not (self.percdamp > 0 and math.isfinite(self.percdamp)):
            raise PrunelabError(f"GPTQ option percdamp={self.percdamp} is not a positive "
                                "finite number", "e.g. --option percdamp=0.01")
        if self.max_damp_retries < 0:
            raise PrunelabError(f"GPTQ option max_damp_retries={self.max_damp_retries} "
                                "is negative", "e.g. --option max_damp_retries=6")


class RoundToGrid:
    """GPTQ's column rule: t_i = the grid value of w_i, or 0 where `prune` (a pruning rule,
    SparseGPT's joint mode) or `keep_zero` (a fixed mask, in sweep order) removes it.

    Codes are written in sweep order into `codes`. `group_of` is each swept column's group;
    grids not given up front (`static`) are found when the sweep reaches their group's first
    column, as the reference code does: on the weights as they stood when the block began
    (the matrix it reads has not yet received the block's own updates); the blocks must then
    hold whole groups.
    """

    def __init__(self, rows: int, cols: int, bits: int, group_size: int, symmetric: bool,
                 group_of: list[int], scales: torch.Tensor, zeros: torch.Tensor,
                 static: bool, prune: ColumnRule | None = None,
                 keep_zero: torch.Tensor | None = None):
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.group_of = group_of
        self.scales, self.zeros, self.static = scales, zeros, static
        self.prune, self.keep_zero = prune, keep_zero
        self.align = getattr(prune, "align", 1)  # N:M groups of a joint pruning rule
        self.codes = torch.empty(rows, cols, device=scales.device)
        self.maxq = float(2 ** bits - 1)
        self.group = -1  # the group whose grid `scale` and `zero` hold

    def begin_block(self, W1, diag, columns):
        self.start = columns.start
        self.diag = diag
        self.targets = torch.empty_like(W1)
        if not self.static:
            self.at_start = W1.clone()
        if self.prune is not None:
            self.prune.begin_block(W1, diag, columns)

    def column_error(self, i, W1, out):
        # Runs once per column of every layer: in-place operations on reused buffers, and the
        # grid looked up only when the group changes. The arithmetic is `codes_of` and
        # `dequantize`'s, step by step.
        j = self.start + i
        group = self.group_of[j]
        if group != self.group:
            if not self.static:  # the sweep has reached this group's first column
                scale, zero = grid(self.at_start[:, i:i + self.group_size], self.bits,
                                   self.symmetric)
                self.scales[:, group], self.zeros[:, group] = scale, zero
            self.scale, self.zero, self.group = self.scales[:, group], self.zeros[:, group], group
        removed = None
        if self.prune is not None:
            self.prune.column_error(i, W1, out)  # decides column i's mask (N:M: its group)
            removed = self.prune.mask[:, i]
        elif self.keep_zero is not None:
            removed = self.keep_zero[:, j]
        code = self.codes[:, j]
        torch.div(W1[:, i], self.scale, out=code)
        code.round_().add_(self.zero).clamp_(0, self.maxq)
        if removed is not None:  # a removed weight is 0, whose code is the zero point
            torch.where(removed, self.zero, code, out=code)
        target = self.targets[:, i]
        torch.sub(code, self.zero, out=target).mul_(self.scale)
        torch.sub(W1[:, i], target, out=out).div_(self.diag[i])

    def end_block(self, W1, columns):
        W1.copy_(self.targets)
        if self.prune is not None:
            self.prune.end_block(W1, columns)  # records the mask (W1 is already 0 there)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int,
                  group_size: int | None = 128, symmetric: bool = False, *,
                  blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                  static_groups: bool = True, keep_zeros: bool = True,
                  prune: ColumnRule | None = None, align: int = 1,
                  max_damp_retries: int = 6, layer: str = "", label: str = "GPTQ",
                  factors: Factors | None = None,
                  ) -> tuple[torch.Tensor, QuantizedWeight, torch.Tensor, float]:
    """Return (dequantized weight, its codes/scales/zero points, dead inputs, dampening).

    `prune` is a pruning rule swept jointly (its blocks must hold whole groups of `align`
    columns, N:M's M). Pure: the inputs are not modified (`factors` keeps the Hessian's
    factor for the next layer that shares it)."""
    W = weight.detach().to(torch.float32)
    rows, cols = W.shape
    size = group_size or cols
    n_groups = cols // size
    dead = torch.diag(hessian) == 0
    diag = torch.diag(hessian).to(torch.float32).clone()
    diag[dead] = 1
    order = torch.argsort(diag, descending=True, stable=True) if act_order else None
    scales = torch.empty(rows, n_groups, device=W.device)
    zeros = torch.empty(rows, n_groups, device=W.device)
    columns = order if order is not None else torch.arange(cols, device=W.device)
    static = group_size is None or (act_order and static_groups)
    if static:
        # Grids from the weights before any update (dead inputs zeroed, as the sweep does),
        # in column order.
        start = W.masked_fill(dead.unsqueeze(0), 0).reshape(rows * n_groups, size)
        scale, zero = grid(start, bits, symmetric)
        scales.copy_(scale.reshape(rows, n_groups))
        zeros.copy_(zero.reshape(rows, n_groups))
        group_of = (columns // size).tolist()
    else:
        # Groups in sweep order (GPTQ without static groups): column j of the sweep is in
        # group j // size, whichever column of the matrix it is.
        group_of = [j // size for j in range(cols)]
        align = math.lcm(align, size)
    blocksize = max(align, blocksize - blocksize % align)
    keep_zero = None
    if keep_zeros and prune is None and bool((W == 0).any()):
        keep_zero = W == 0
        if order is not None:
            keep_zero = keep_zero[:, order]
    rule = RoundToGrid(rows, cols, bits, size, symmetric, group_of, scales, zeros, static,
                       prune, keep_zero)
    new_weight, dead, damp = obs_solve(weight, hessian, rule, blocksize=blocksize,
                                       percdamp=percdamp, max_damp_retries=max_damp_retries,
                                       layer=layer, label=label, order=order, factors=factors)
    codes = rule.codes
    group_index = None
    if order is not None:
        codes = codes[:, torch.argsort(order)]
        if not static:
            group_index = torch.empty(cols, dtype=torch.long, device=W.device)
            group_index[order] = torch.arange(cols, device=W.device) // size
    quantized = QuantizedWeight(codes.to(torch.uint8), scales, zeros.to(torch.uint8), bits,
                                size, symmetric, act_order, group_index=group_index,
                                per_channel=group_size is None)
    return new_weight, quantized, dead, damp


@register
class GPTQ(Quantizer):
    name = "gptq"
    cost = MethodCost(passes=3.0, seconds_per_mparam=0.1)  # the same column sweep as SparseGPT
    summary = "GPTQ: columns rounded in turn, error spread through the Cholesky factor of H⁻¹"
    statistics = ("hessian",)
    Config = GPTQConfig

    def sequential_groups(self) -> bool:
        return self.config.true_sequential

    def prune_block(self, block, layers, stats, targets):
        with shared_factors(self):
            yield from super().prune_block(block, layers, stats, targets)

    def prune_layer(self, weight, stats: LayerStats, target: LayerTarget):
        c = self.config
        new_weight, quantized, _, damp = gptq_quantize(
            weight, stats["hessian"], c.bits, c.group_size, c.symmetric,
            blocksize=c.blocksize, percdamp=c.percdamp, act_order=c.act_order,
            static_groups=c.static_groups, keep_zeros=c.keep_zeros,
            max_damp_retries=c.max_damp_retries, layer=target.name,
            factors=getattr(self, "factors", None))
        pruned = (weight == 0) if c.keep_zeros and bool((weight == 0).any()) else None
        return LayerDecision(new_weight, pruned, {"bits": c.bits, "percdamp_used": damp},
                             quantized=quantized)
