"""Shared selection rules: which weights to remove, given a score per weight.

Every function takes a score matrix [out, in] (lower = less important) and returns a boolean
mask of the same shape, True where a weight is pruned. Ties are broken by position (as a
stable sort would), so that exactly the requested number of weights is removed even when
many scores are equal, as they are in dequantized 4-bit checkpoints. (The reference code
thresholds with `score <= kth value`, which over-prunes on ties.)
"""

from __future__ import annotations

import torch

from prunelab.checks import NMPattern, check_sparsity, parse_pattern  # noqa: F401  (re-exported)
from prunelab.errors import PrunelabError


def lowest_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the `k` lowest scores of every row, ties going to the earlier position.

    The same mask as the first k of a stable sort, found in linear time: the k-th smallest
    value by selection, everything below it, then as many of the equal ones as still fit.
    """
    cols = scores.shape[1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = scores.kthvalue(k, dim=1, keepdim=True).values
    below = scores < kth
    tied = scores == kth
    room = k - below.sum(dim=1, keepdim=True)
    if bool((tied.sum(dim=1, keepdim=True) == room).all()):
        return below | tied  # every tie fits (the common case: the k-th value alone)
    return below | (tied & (tied.cumsum(dim=1) <= room))


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
    order = torch.sort(grouped, dim=-1, stable=True).indices[..., : pattern.m - pattern.n]
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.view(rows, cols)


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
