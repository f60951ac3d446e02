"""Integer weight grids shared by the quantizers (RTN, GPTQ, SparseGPT's joint mode).

A weight row is cut into groups of `group_size` consecutive input columns (or one group per
row: per-channel); each group has a grid of 2^bits levels, w ≈ (q − z) · s with an integer
code q in [0, 2^bits − 1], a scale s and an integer zero point z, as in GPTQ's reference
quantizer:
- asymmetric: the range [min(w, 0), max(w, 0)] is cut into 2^bits − 1 steps,
  s = (max − min) / (2^bits − 1), z = round(−min / s);
- symmetric: the range is [−m, m] with m = max |w|, s = 2m / (2^bits − 1) and z = 2^(bits−1)
  (the signed codes q − z then run from −2^(bits−1) to 2^(bits−1) − 1, the range
  compressed-tensors stores). The reference keeps min = 0 for a row with no negative weight,
  which clips its upper half; we always take the range symmetric.
Zero is always on the grid (both ranges include it, and z is an integer), so a weight that is
exactly zero, a pruned one, gets the code z and dequantizes to exactly zero. An all-zero group
gets the range [−1, 1] so its scale is not zero.

The codes, scales and zero points of a layer are kept in a `QuantizedWeight`, which the
engine hands on (`PruneResult.quantized`) so that packed checkpoints can be written. The
engine keeps only the grid: the layer's weight is the dequantized value, and the codes are
read back off it when a checkpoint is written (`codes_for`), as compressed-tensors does; a
byte per weight held for every layer until the save would add a quarter of an fp32 model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from prunelab.checks import SUPPORTED_BITS, check_bits, check_group_size  # noqa: F401
from prunelab.errors import PrunelabError

# Scales are counted at 16 bits in the bits-per-weight axis: what a bf16/fp16 checkpoint
# stores (prunelab's own compressed-tensors files keep them in fp32, see api.save).
SCALE_BITS = 16
DENSE_BITS = 16  # a bf16 weight


@dataclass
class QuantizedWeight:
    """One layer's quantized weight: the dequantized weight is (codes − zeros) · scales, with
    each row's scales and zeros repeated over the `group_size` columns of their group."""

    codes: torch.Tensor | None  # uint8 [out, in], in [0, 2^bits − 1]; None: read off the weight
    scales: torch.Tensor  # float32 [out, groups]
    zeros: torch.Tensor  # uint8 [out, groups]
    bits: int
    group_size: int  # columns per group; the input width when per-channel
    symmetric: bool
    act_order: bool = False  # columns were quantized by decreasing diag H
    # The group of each column [in] when groups are not consecutive columns (act-order
    # without static groups); None: column j is in group j // group_size.
    group_index: torch.Tensor | None = None
    notes: dict = field(default_factory=dict)
    per_channel: bool = False  # one grid per output channel (asked for, not a group size
    # that happens to equal the width)

    def dequantize(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(codes − zeros) · scales in float32; `weight` is where codes not kept are read."""
        return dequantize(self.codes_for(weight), self.scales, self.zeros, self.group_size,
                          self.group_index)

    def codes_for(self, weight: torch.Tensor | None) -> torch.Tensor:
        """The codes: those kept, or else read back off `weight`, the layer's dequantized
        value. Exact while the weight's dtype resolves every level (`can_read_codes`); a
        weight changed since (fine-tuned) reads as other codes, which whoever writes a
        checkpoint finds by dequantizing them and comparing."""
        if self.codes is not None:
            return self.codes
        if weight is None:
            raise ValueError("this layer's codes were not kept: pass its weight")
        scales, zeros = _per_column(self.scales, self.zeros, self.group_size, self.group_index)
        if weight.shape != scales.shape and weight.t().shape == scales.shape:
            weight = weight.t()  # stored [in, out] (GPT-2's Conv1D)
        weight = weight.detach().to(device=scales.device, dtype=torch.float32)
        return codes_of(weight, scales, zeros, self.bits).to(torch.uint8)

    def grid_only(self, dtype: torch.dtype) -> QuantizedWeight:
        """This record without its codes where a weight of `dtype` holds them exactly."""
        if self.codes is None or not can_read_codes(dtype, self.bits):
            return self
        return replace(self, codes=None)

    def to(self, device) -> QuantizedWeight:
        index = self.group_index.to(device) if self.group_index is not None else None
        codes = self.codes.to(device) if self.codes is not None else None
        return QuantizedWeight(codes, self.scales.to(device),
                               self.zeros.to(device), self.bits, self.group_size,
                               self.symmetric, self.act_order, index, dict(self.notes),
                               self.per_channel)


def can_read_codes(dtype: torch.dtype, bits: int) -> bool:
    """Whether a dequantized weight stored in `dtype` gives back its integer codes by
    rounding: the level q − z, up to 2^bits − 1 in size, comes back off by at most its size
    times half the dtype's epsilon, which must stay under half a step, with a factor of two
    to spare (bf16 holds 4-bit levels, not 8-bit ones; fp16 holds both)."""
    return (2 ** bits - 1) * torch.finfo(dtype).eps < 0.5


# The group sizes tried, largest first, when none is given on the command line.
GROUP_SIZE_CHOICES = (128, 64, 32)


def check_group_fits(group_size: int | None, width: int, layer: str) -> None:
    """Refuse a group size that does not divide a layer's input width."""
    if group_size is not None and width % group_size:
        raise PrunelabError(f"group size {group_size} does not divide the input width "
                            f"{width} of {layer}",
                            f"pass --group-size {_divisor_near(width, group_size)} (or another "
                            f"divisor of {width}), or --group-size none for per-channel grids; "
                            "with --option or in a recipe, group_size=")


def largest_group_size(widths, choices: tuple[int, ...] = GROUP_SIZE_CHOICES) -> int | None:
    """The largest of `choices` dividing every width; None (per channel) if none does."""
    widths = list(widths)
    return next((size for size in choices if all(w % size == 0 for w in widths)), None)


def group_size_line(group_size: int | None,
                    choices: tuple[int, ...] = GROUP_SIZE_CHOICES) -> str:
    """What the command line says about the group size it chose."""
    listed = ", ".join(map(str, choices))
    if group_size is None:
        return (f"group size none: none of {listed} divides every layer width, so one grid "
                "per output channel")
    return f"group size {group_size}: the largest of {listed} dividing every layer width"


def _divisor_near(width: int, wanted: int) -> int:
    """A group size to suggest: the largest power of two below `wanted` that divides `width`
    (likely to divide the model's other widths too), else the nearest divisor."""
    power = 1
    while power * 2 <= wanted and width % (power * 2) == 0:
        power *= 2
    if power >= 8:
        return power
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), d))


def max_code(bits: int) -> int:
    return 2 ** bits - 1


def grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of `w` [rows, cols]: the grid its values are rounded onto.

    `zero` is returned as float (an integer value), ready for the rounding arithmetic."""
    maxq = max_code(bits)
    zeros = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    low = torch.minimum(w.min(dim=1).values, zeros)
    high = torch.maximum(w.max(dim=1).values, zeros)
    if symmetric:
        high = torch.maximum(low.abs(), high)
        low = -high
    empty = (low == 0) & (high == 0)
    low = torch.where(empty, -1.0, low)
    high = torch.where(empty, 1.0, high)
    scale = (high - low) / maxq
    if symmetric:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-low / scale)
    return scale, zero


def codes_of(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
             bits: int) -> torch.Tensor:
    """Integer codes (as float) of `w` on the grid; scale and zero broadcast against w."""
    return torch.clamp(torch.round(w / scale) + zero, 0, max_code(bits))


def _per_column(scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                group_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each weight's scale and zero point (float32, [out, in])."""
    if group_index is not None:
        return (scales.to(torch.float32)[:, group_index],
                zeros.to(torch.float32)[:, group_index])
    return (scales.to(torch.float32).repeat_interleave(group_size, dim=1),
            zeros.to(torch.float32).repeat_interleave(group_size, dim=1))


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int, group_index: torch.Tensor | None = None) -> torch.Tensor:
    """(codes − zeros) · scales in float32, the same arithmetic (and so the same bits) as
    compressed-tensors' dequantization with float32 scales."""
    s, z = _per_column(scales, zeros, group_size, group_index)
    return (codes.to(torch.float32) - z) * s


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int | None,
                 symmetric: bool) -> QuantizedWeight:
    """Round every weight to the nearest level of its group's grid (no error feedback)."""
    W = weight.detach().to(torch.float32)
    rows, cols = W.shape
    size = group_size or cols
    groups = W.reshape(rows * (cols // size), size)
    scale, zero = grid(groups, bits, symmetric)
    codes = codes_of(groups, scale[:, None], zero[:, None], bits)
    return QuantizedWeight(codes.reshape(rows, cols).to(torch.uint8),
                           scale.reshape(rows, -1).contiguous(),
                           zero.reshape(rows, -1).to(torch.uint8), bits, size, symmetric,
                           per_channel=group_size is None)


# -- storage cost: the study's bits-per-weight axis -----------------------------------------------


def quantized_bits_per_weight(bits: int, group_size: int | None, symmetric: bool,
                              width: int | None = None) -> float:
    """Stored bits per weight: the code, plus each group's scale (16 bits) and, asymmetric,
    its zero point (`bits` bits), spread over the group. Per-channel needs the row `width`
    (without it, the per-row overhead is taken as negligible)."""
    size = group_size or width
    overhead = SCALE_BITS + (0 if symmetric else bits)
    return bits + (overhead / size if size else 0.0)


def pruned_bits_per_weight(sparsity: float, n: int | None = None, m: int | None = None,
                           value_bits: float = DENSE_BITS) -> float:
    """Stored bits per weight of a pruned matrix: the kept values, plus where they are (a
    bitmask, 1 bit per weight; for N:M, log2 C(M, N) bits per group of M)."""
    if not sparsity and n is None:
        return float(value_bits)
    if n is not None and m is not None:
        return (n / m) * value_bits + math.log2(math.comb(m, n)) / m
    return (1 - sparsity) * value_bits + 1.0
