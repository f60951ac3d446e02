"""Shared selection rules: which weights to remove, given a score per weight.

Every function takes a score matrix [out, in] (lower = less important) and returns a boolean
mask of the same shape, True where a weight is pruned. Ties are broken by position (as a
stable sort would), so that exactly the requested number of weights is removed even when
many scores are equal, as they are in dequantized 4-bit checkpoints. (The reference code
thresholds with `score <= kth value`, which over-prunes on ties.)
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab.checks import NMPattern, check_sparsity, parse_pattern  # noqa: F401  (re-exported)
from prunelab.errors import PrunelabError


def lowest_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the `k` lowest scores of every row, ties going to the earlier position.

    The same mask as the first k of a stable sort, found in linear time: the k-th smallest
    value by selection, everything up to it, and only where a row has more ties at that
    value than still fit, the earlier ones of them.
    """
    cols = scores.shape[1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = kth_smallest(scores, k)
    at_most = scores <= kth
    if bool((row_counts(at_most) == k).all()):
        return at_most  # every tie fits (the common case: the k-th value alone)
    below = scores < kth
    tied = scores == kth
    room = k - row_counts(below)
    return below | (tied & (tied.cumsum(dim=1) <= room))


def kth_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value of every row (k from 1), shape [rows, 1], as `kthvalue` gives it.

    On the CPU numpy's partition selects without carrying indices along and is several
    times faster than `kthvalue`; half-precision rows are compared in float32, which orders
    them exactly as they are.
    """
    if scores.device.type != "cpu" or not scores.is_floating_point():
        return scores.kthvalue(k, dim=1, keepdim=True).values
    exact = scores.detach()
    if exact.dtype not in (torch.float32, torch.float64):
        exact = exact.to(torch.float32)
    kth = np.partition(exact.numpy(), k - 1, axis=1)[:, k - 1: k]
    return torch.from_numpy(np.ascontiguousarray(kth)).to(scores.dtype)


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """How many entries of each row are True, shape [rows, 1] (summed as bytes into int32:
    a boolean sum widens every entry to int64 first, several times slower)."""
    return mask.view(torch.uint8).sum(dim=1, keepdim=True, dtype=torch.int32)


def zero_where(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of `weight` with +0.0 where `mask` is True: `masked_fill(mask, 0)`, bit for bit.

    On the CPU as an AND with the mask's complement on the weight's bits, which runs
    several times faster than `masked_fill` there.
    """
    as_int = _bits_dtype(weight)
    if as_int is None:
        return weight.masked_fill(mask, 0)
    return (weight.view(as_int) & _keep_bits(mask, as_int)).view(weight.dtype)


def zero_where_(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`zero_where` in place."""
    as_int = _bits_dtype(weight)
    if as_int is None:
        return weight.masked_fill_(mask, 0)
    weight.view(as_int).bitwise_and_(_keep_bits(mask, as_int))
    return weight


def _bits_dtype(weight: torch.Tensor) -> torch.dtype | None:
    """The integer dtype of a CPU float weight's width, to work on its bits; None elsewhere."""
    if weight.device.type != "cpu" or not weight.is_floating_point():
        return None
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(weight.element_size())


def _keep_bits(mask: torch.Tensor, as_int: torch.dtype) -> torch.Tensor:
    return (~mask).to(as_int).neg_()  # every bit set where kept, none where pruned


def lowest_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the `int(in · s)` lowest scores of every row (Wanda's comparison group)."""
    return lowest_k_per_row(scores, int(scores.shape[1] * sparsity))


def lowest_in_matrix(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the `int(numel · s)` lowest scores of the whole matrix."""
    k = int(scores.numel() * sparsity)
    return lowest_k_per_row(scores.reshape(1, -1), k).view_as(scores)


def lowest_n_of_m(scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """In every group of M consecutive inputs of a row, prune the M − N lowest scores."""
    rows, cols = scores.shape
    check_pattern_fits(pattern, cols)
    grouped = scores.reshape(rows, cols // pattern.m, pattern.m)
    if pattern.m <= 4 or (pattern.m <= 8 and cols // pattern.m >= 8):
        return _lowest_in_groups_pairwise(grouped, pattern.m - pattern.n).view(rows, cols)
    order = torch.sort(grouped, dim=-1, stable=True).indices[..., : pattern.m - pattern.n]
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.view(rows, cols)


def _lowest_in_groups_pairwise(grouped: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` lowest of every group [..., M], as a stable sort would pick them, from each
    entry's rank: how many of its group a stable ascending sort puts before it. M(M−1)/2
    comparisons of whole columns of groups run several times faster than sorting millions
    of groups of four or eight (a sort wins for a single wide group)."""
    m = grouped.shape[-1]
    members = [grouped[..., i] for i in range(m)]
    nan = [member.isnan() for member in members] if bool(grouped.isnan().any()) else None
    ranks = [torch.zeros(grouped.shape[:-1], dtype=torch.uint8, device=grouped.device)
             for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            i_first = members[i] <= members[j]  # a tie goes to the earlier position
            if nan is not None:
                i_first |= nan[j]  # NaN sorts last
            ranks[j] += i_first
            ranks[i] += ~i_first
    return torch.stack([rank < count for rank in ranks], dim=-1)


def check_pattern_fits(pattern: NMPattern, in_features: int, layer: str = "") -> None:
    if in_features % pattern.m:
        where = f" of {layer}" if layer else ""
        raise PrunelabError(
            f"pattern {pattern}: M={pattern.m} does not divide the input width {in_features}{where}",
            "choose M that divides every layer's input width (e.g. 4 or 8)",
        )


def select(scores: torch.Tensor, sparsity: float, pattern: NMPattern | None,
           per_row: bool) -> torch.Tensor:
    """The common case: an N:M pattern if given, else per-row or per-matrix unstructured."""
    if pattern is not None:
        return lowest_n_of_m(scores, pattern)
    return lowest_per_row(scores, sparsity) if per_row else lowest_in_matrix(scores, sparsity)
