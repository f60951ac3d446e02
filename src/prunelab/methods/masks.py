"""Shared selection rules: which weights to remove, given a score per weight.

Every function takes a score matrix [out, in] (lower = less important) and returns a boolean
mask of the same shape, True where a weight is pruned. Ties are broken by position (as a
stable sort would), so that exactly the requested number of weights is removed even when
many scores are equal, as they are in dequantized 4-bit checkpoints. (The reference code
thresholds with `score <= kth value`, which over-prunes on ties.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class NMPattern:
    """At most `n` non-zero weights in every group of `m` consecutive inputs of a row.

    This is the usual reading of "2:4" (NVIDIA's). Beware that the Wanda repository's
    `--sparsity_type N:M` passes the number of *zeroed* weights as N; for 2:4 both agree.
    """

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(pattern: str | None) -> NMPattern | None:
    """Parse "N:M"; None or "unstructured" means no pattern."""
    if pattern is None or pattern in ("", "unstructured"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise PrunelabError(f"pattern {pattern!r} is not of the form N:M",
                            "write it like 2:4 (keep 2 of every 4 weights)")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PrunelabError(f"pattern {pattern}: N must be at least 1 and below M",
                            "use e.g. 2:4, 4:8 or 1:8 (N kept out of every M)")
    return NMPattern(n, m)


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PrunelabError(f"sparsity {sparsity} is outside [0, 1)",
                            "give a fraction such as 0.5 for 50%")
    return float(sparsity)


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
