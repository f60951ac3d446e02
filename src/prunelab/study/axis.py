"""Compression intensity in bits per weight: one x-axis for pruning and quantization.

A chain of stages is priced by what storing its prunable matrices costs per weight, starting
from a dense 16-bit (bf16) weight:
- pruning to sparsity s keeps a share 1 − s of the values and adds where they are: a bitmask
  (1 bit per weight; N:M: log2 C(M, N) bits per group of M);
- quantizing to b bits makes each stored value b bits and adds each group's 16-bit scale and,
  asymmetric, its b-bit zero point, spread over the group (per-channel grids: over a row,
  whose width the recipe does not know; that overhead, under 0.03 bits for rows of 576 or
  more, is left out);
- both (prune then quantize, or SparseGPT's joint mode): kept share × b + mask + grid overhead.
The axis is `bits_removed_per_weight` = 16 − stored bits per weight, so that, like sparsity,
it is 0 for the dense model and grows with compression: a recipe's pruning and quantization
arms then share one axis and the study's statistics (slopes along level rank, thresholds)
read it as they read a sparsity.
"""

from __future__ import annotations

from prunelab.study.stages import Stage

BITS_REMOVED = "bits_removed_per_weight"
DENSE_BITS = 16.0


def stored_bits_per_weight(stages: list[Stage] | tuple[Stage, ...]) -> float:
    """Bits per prunable weight that the chain's result takes to store (see module doc)."""
    from prunelab.methods.base import make_method
    from prunelab.methods.quant import SCALE_BITS

    kept, mask, value, overhead = 1.0, 0.0, DENSE_BITS, 0.0
    for stage in stages:
        method = getattr(stage, "method", None)
        if method is None:
            continue
        config = make_method(method, stage.options).config
        sparsity = getattr(stage, "sparsity", None) or 0.0
        pattern = getattr(stage, "pattern", None)
        if pattern:
            n, m = (int(v) for v in pattern.split(":"))
            kept = min(kept, n / m)
            mask = _nm_mask_bits(n, m)
        elif sparsity:
            kept = min(kept, 1 - sparsity)
            mask = max(mask, 1.0)
        bits = getattr(config, "bits", None)
        if bits is not None:
            value = float(bits)
            group = getattr(config, "group_size", None)
            zero_bits = 0 if getattr(config, "symmetric", False) else bits
            overhead = (SCALE_BITS + zero_bits) / group if group else 0.0
    return kept * value + mask + overhead


def bits_removed_per_weight(stages) -> float:
    return round(DENSE_BITS - stored_bits_per_weight(stages), 6)


def _nm_mask_bits(n: int, m: int) -> float:
    import math

    return math.log2(math.comb(m, n)) / m
