"""The optimal-brain-surgeon column sweep shared by SparseGPT (pruning) and GPTQ (quantization).

For a layer with weight W [out, in] and H = (2/N) Σ x xᵀ, let U be the upper Cholesky factor
of (H + λI)⁻¹. The sweep goes through the columns in order; each column i is replaced by a
target t_i that a *rule* chooses (zero where pruned, the grid value where quantized), and
the change it leaves, e_i = (w_i − t_i) / U_ii, is spread onto the columns after it:
W[:, i:] −= e_i ⊗ U[i, i:], which minimises the change of WX given the columns before.
Columns go in blocks: inside a block the update is applied column by column, and the
block's errors reach the later columns in one matrix product.

A rule is any object with three methods (see `ColumnRule`); only `column_error` runs once
per column, and the loop around it is Python-bound (a layer has thousands of columns), so a
rule should do the least it can there.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple, Protocol

import torch

from prunelab.errors import PrunelabError


class ColumnRule(Protocol):
    def begin_block(self, W1: torch.Tensor, diag: torch.Tensor, columns: slice) -> None:
        """A new block: `W1` is its weights [out, b] (updated in place by the sweep), `diag`
        the factor's diagonal U_ii over its columns, `columns` its place in the matrix."""

    def column_error(self, i: int, W1: torch.Tensor, out: torch.Tensor) -> None:
        """Write e_i = (W1[:, i] − t_i) / diag[i] into `out` for column i of the block."""

    def end_block(self, W1: torch.Tensor, columns: slice) -> None:
        """The block is done: set its columns exactly to their targets (the update leaves
        them there only up to rounding) and record what was decided."""


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
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(retries + 1):
        try:
            lower = torch.linalg.cholesky(hessian + damp * mean_diag * eye)
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True), damp
        except torch.linalg.LinAlgError:
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


def obs_solve(weight: torch.Tensor, hessian: torch.Tensor, rule: ColumnRule, *,
              blocksize: int = 128, percdamp: float = 0.01, max_damp_retries: int = 6,
              layer: str = "", label: str = "SparseGPT",
              order: torch.Tensor | None = None) -> ObsResult:
    """Sweep `rule` over a copy of `weight` with the calibration Hessian. Pure: the inputs are
    not modified. With `order` (a permutation of the columns, GPTQ's act-order) the sweep
    goes through the columns in that order; the rule sees them permuted, the result does
    not."""
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(torch.float32).clone()
    # Inputs that never fire carry no information: their weights go, and H gets a unit
    # diagonal there so it stays invertible.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if order is not None:
        W, H = W[:, order], H[order][:, order]
    with _one_thread():
        U, damp = inverse_hessian_factor(H, percdamp, max_damp_retries, layer, label)
        sweep_columns(W, U, rule, blocksize)
    if order is not None:
        W = W[:, torch.argsort(order)]
    return ObsResult(W, dead, damp)


def sweep_columns(W: torch.Tensor, U: torch.Tensor, rule: ColumnRule, blocksize: int) -> None:
    """The sweep itself, on W in place, with U the upper factor of the inverse Hessian."""
    cols = W.shape[1]
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        columns = slice(start, end)
        W1 = W[:, start:end].clone()
        U1 = U[start:end, start:end]
        errors = torch.zeros_like(W1)
        rule.begin_block(W1, torch.diag(U1), columns)
        column_error = rule.column_error
        for i in range(end - start):
            error = errors[:, i]
            column_error(i, W1, error)
            W1[:, i:].addr_(error, U1[i, i:], alpha=-1)
        rule.end_block(W1, columns)
        W[:, start:end] = W1
        W[:, end:].addmm_(errors, U[start:end, end:], alpha=-1)
