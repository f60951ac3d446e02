"""The optimal-brain-surgeon column sweep shared by SparseGPT (pruning) and GPTQ (quantization).

For a layer with weight W [out, in] and H = (2/N) Σ x xᵀ, let U be the upper Cholesky factor
of (H + λI)⁻¹. The sweep goes through the columns in order; each column i is replaced by a
target t_i that a *rule* chooses (zero where pruned, the grid value where quantized), and
the change it leaves, e_i = (w_i − t_i) / U_ii, is spread onto the columns after it:
W[:, i:] −= e_i ⊗ U[i, i:], which minimises the change of WX given the columns before.
Columns go in blocks: inside a block the update is applied column by column, and the
block's errors reach the later columns in one matrix product. The same holds one level down:
inside a block, the column-by-column updates stay within a slice of `INNER` columns (small
enough to stay in cache), and each slice's errors reach the rest of the block in one matrix
product. Every column still receives every earlier column's update before it is decided, so
the result is the column-by-column sweep's up to float rounding, in about half the time (the
rank-one updates over the whole block were bound by memory traffic).

A rule is any object with three methods (see `ColumnRule`); only `column_error` runs once
per column, and the loop around it is Python-bound (a layer has thousands of columns), so a
rule should do the least it can there. A rule that reads a group of columns when it reaches
the group's first one (N:M) says how wide its groups are in `align`: slices then hold whole
groups, so the group's later columns are up to date when it is decided.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple, Protocol

import torch

from prunelab.errors import PrunelabError

# Columns per slice of the in-block update (see the module's docstring): small enough for a
# slice of a few thousand rows to stay in cache, large enough for the slice's matrix product
# to pay (docs/findings/peers.md has the timings that chose it).
INNER = 16


class ColumnRule(Protocol):
    def begin_block(self, W1: torch.Tensor, diag: torch.Tensor, columns: slice) -> None:
        """A new block: `W1` is its weights [out, b] (updated in place by the sweep), `diag`
        the factor's diagonal U_ii over its columns, `columns` its place in the matrix."""

    def column_error(self, i: int, W1: torch.Tensor, out: torch.Tensor) -> None:
        """Write e_i = (W1[:, i] − t_i) / diag[i] into `out` for column i of the block."""

    def end_block(self, W1: torch.Tensor, columns: slice) -> None:
        """The block is done: set its columns exactly to their targets (the update leaves
        them there only up to rounding) and record what was decided."""

    # Optional: `align`, the width of the column groups the rule decides together (1 if
    # absent); `column_error` reads a group's columns when the sweep reaches its first.


class ObsResult(NamedTuple):
    weight: torch.Tensor  # the new weight, fp32
    dead: torch.Tensor  # bool [in]: inputs that never fired; their columns are zero
    damp: float  # the dampening that made the Cholesky factorisation succeed


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of tiny ops on small matrices (at most a few thousand
    wide): extra threads cost more in synchronisation than they save, and much more when
    other work competes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, retries: int,
                           layer: str = "", label: str = "SparseGPT",
                           ) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean(diag H), raising percdamp ×10
    per failure (with a warning). Never falls back silently to something else: if no λ
    works, the user is told to act."""
    mean_diag = float(torch.mean(torch.diag(hessian)))
    damp = percdamp
    # With J the exchange matrix (columns reversed) and J H J = L Lᵀ, the matrix
    # U = J L⁻¹ J is upper triangular with a positive diagonal and Uᵀ U = H⁻¹: the factor
    # wanted, from one Cholesky factorisation and one triangular inverse, without forming H⁻¹
    # (half the arithmetic of factoring H, inverting it and factoring the inverse). Every
    # step runs in place in one matrix beside H (a 4864-wide Hessian is 95 MB in fp32): the
    # factorisation on the column-major view, which LAPACK works on without a copy, leaving
    # Lᵀ in the row-major matrix; inverted and reversed that is Uᵀ, and transposed, U.
    for attempt in range(retries + 1):
        factor = hessian.flip(0, 1)  # a copy; its diagonal is H's, reversed
        factor.diagonal().add_(damp * mean_diag)
        lower = factor.mT
        info = torch.empty((), dtype=torch.int32, device=factor.device)
        torch.linalg.cholesky_ex(lower, out=(lower, info))
        if int(info) == 0:
            invert_lower_triangular_(lower)
            reverse_rows_and_columns_(factor)
            return transpose_(factor), damp
        del factor, lower
        if attempt == retries:
            break
        warnings.warn(f"{label}: Hessian of {layer or 'a layer'} is not positive definite "
                      f"with dampening {damp:g}; retrying with {damp * 10:g}", stacklevel=2)
        damp *= 10
    raise PrunelabError(
        f"{label}: the Hessian of {layer or 'a layer'} is not positive definite even with "
        f"dampening {damp:g}",
        "raise percdamp (--option percdamp=0.1) or use more calibration samples",
    )


def invert_lower_triangular_(lower: torch.Tensor, leaf: int = 128,
                             band: int = 256) -> torch.Tensor:
    """L⁻¹ in place of a lower-triangular L, in a third of the arithmetic of solving L X = I.

    A triangular solve against the identity does n³ multiply-adds, most of them on the
    identity's zeros. Split L = [[A, 0], [B, C]]: then L⁻¹ = [[A⁻¹, 0], [−C⁻¹ B A⁻¹, C⁻¹]].
    The corner is found while A and C are still themselves, in place of B: B A⁻¹ a band of
    rows at a time (rows are independent there), then C⁻¹ of that a band of columns at a
    time; then A and C are inverted the same way. n³/3 in all, as LAPACK's trtri does (torch
    has no trtri). The solves get a contiguous copy of their triangle (they would copy a
    strided one at every call), one at a time: the largest temporary is a quarter of L.
    """
    size = lower.shape[0]
    if size <= leaf:
        identity = torch.eye(size, dtype=lower.dtype, device=lower.device)
        lower.copy_(torch.linalg.solve_triangular(lower, identity, upper=False))
        return lower
    half = size // 2
    b = lower[half:, :half]
    a = lower[:half, :half].contiguous()
    for top in range(0, b.shape[0], band):
        rows = b[top: top + band]
        rows.copy_(torch.linalg.solve_triangular(a, rows, upper=False, left=False))
    del a
    c = lower[half:, half:].contiguous()
    for left in range(0, b.shape[1], band):
        columns = b[:, left: left + band]
        columns.copy_(torch.linalg.solve_triangular(c, columns, upper=False)).neg_()
    del c
    invert_lower_triangular_(lower[:half, :half], leaf, band)
    invert_lower_triangular_(lower[half:, half:], leaf, band)
    return lower


def reverse_rows_and_columns_(matrix: torch.Tensor, rows_at_once: int = 256) -> torch.Tensor:
    """`matrix.flip(0, 1)` in place of `matrix`, swapping bands of rows from both ends
    (temporaries of a band's size, not a second matrix)."""
    size = matrix.shape[0]
    top = 0
    while size - 2 * top > 0:
        band = min(rows_at_once, (size - 2 * top) // 2)
        if band == 0:  # the middle row of an odd count: reversed within itself
            middle = matrix[top]
            middle.copy_(middle.flip(0))
            break
        upper = matrix[top: top + band]
        lower = matrix[size - top - band: size - top]
        upper_reversed = upper.flip(0, 1)  # a copy
        upper.copy_(lower.flip(0, 1))
        lower.copy_(upper_reversed)
        top += band
    return matrix


def transpose_(matrix: torch.Tensor, rows_at_once: int = 256) -> torch.Tensor:
    """A square matrix transposed in place, block by block (temporaries of a block's size)."""
    size = matrix.shape[0]
    for top in range(0, size, rows_at_once):
        rows = slice(top, top + rows_at_once)
        diagonal = matrix[rows, rows]
        diagonal.copy_(diagonal.mT.clone())
        for left in range(top + rows_at_once, size, rows_at_once):
            columns = slice(left, left + rows_at_once)
            above = matrix[rows, columns].clone()
            matrix[rows, columns] = matrix[columns, rows].mT
            matrix[columns, rows] = above.mT
    return matrix


class Factors:
    """The inverse-Hessian factors of one block's layers, computed once per Hessian: layers
    that read the same input (q/k/v; gate/up) share one Hessian object, and so one factor."""

    def __init__(self) -> None:
        self._by_hessian: dict[tuple, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def get(self, hessian: torch.Tensor, key: tuple, compute):
        found = self._by_hessian.get((id(hessian), *key))
        if found is not None and found[0] is hessian:
            return found[1], found[2]
        U, damp = compute()
        self._by_hessian[(id(hessian), *key)] = (hessian, U, damp)  # holds it: ids stay unique
        return U, damp


@contextlib.contextmanager
def shared_factors(method):
    """While one block (or group) is decided, `method.factors` keeps each Hessian's factor
    for the layers that share it; afterwards the factors are let go."""
    method.factors = Factors()
    try:
        yield
    finally:
        method.factors = None


def obs_solve(weight: torch.Tensor, hessian: torch.Tensor, rule: ColumnRule, *,
              blocksize: int = 128, percdamp: float = 0.01, max_damp_retries: int = 6,
              layer: str = "", label: str = "SparseGPT",
              order: torch.Tensor | None = None, factors: Factors | None = None) -> ObsResult:
    """Sweep `rule` over a copy of `weight` with the calibration Hessian. Pure: the inputs are
    not modified. With `order` (a permutation of the columns, GPTQ's act-order) the sweep
    goes through the columns in that order; the rule sees them permuted, the result does
    not. `factors` reuses the factor of a Hessian already factored (the same object)."""
    W = weight.detach().to(torch.float32).clone()
    # Inputs that never fire carry no information: their weights go, and H gets a unit
    # diagonal there so it stays invertible.
    dead = torch.diag(hessian) == 0
    W[:, dead] = 0
    if order is not None:
        W = W[:, order]

    def factor():
        H = hessian.detach().to(torch.float32)
        if bool(dead.any()):
            H = H.clone()
            H[dead, dead] = 1
        if order is not None:
            H = H[order][:, order]
        return inverse_hessian_factor(H, percdamp, max_damp_retries, layer, label)

    with _one_thread():
        if factors is None:
            U, damp = factor()
        else:
            key = (percdamp, max_damp_retries,
                   None if order is None else tuple(order.tolist()))
            U, damp = factors.get(hessian, key, factor)
        sweep_columns(W, U, rule, blocksize)
    if order is not None:
        W = W[:, torch.argsort(order)]
    return ObsResult(W, dead, damp)


def sweep_columns(W: torch.Tensor, U: torch.Tensor, rule: ColumnRule, blocksize: int) -> None:
    """The sweep itself, on W in place, with U the upper factor of the inverse Hessian."""
    cols = W.shape[1]
    align = getattr(rule, "align", 1)
    inner = max(align, INNER - INNER % align)  # slices hold whole groups
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        width = end - start
        columns = slice(start, end)
        W1 = W[:, start:end].clone()
        U1 = U[start:end, start:end]
        errors = torch.zeros_like(W1)
        rule.begin_block(W1, torch.diag(U1), columns)
        column_error = rule.column_error
        for first in range(0, width, inner):
            last = min(first + inner, width)
            for i in range(first, last):
                error = errors[:, i]
                column_error(i, W1, error)
                W1[:, i:last].addr_(error, U1[i, i:last], alpha=-1)
            if last < width:
                W1[:, last:].addmm_(errors[:, first:last], U1[first:last, last:], alpha=-1)
        rule.end_block(W1, columns)
        W[:, start:end] = W1
        W[:, end:].addmm_(errors, U[start:end, end:], alpha=-1)
