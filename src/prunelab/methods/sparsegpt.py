"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal-brain-surgeon updates.

For a layer with weight W [out, in] and calibration inputs X, H = (2/N) Σ x xᵀ. Going through
the columns in blocks of 128, the mask is chosen from W² / diag(H⁻¹ factor)², and every pruned
weight's error is spread onto the not-yet-processed columns of its row through the upper
Cholesky factor of H⁻¹, so that WX changes as little as possible.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import torch

from prunelab.errors import PrunelabError
from prunelab.methods.base import (LayerDecision, LayerStats, LayerTarget, PruningMethod,
                                   Statistic, register)
from prunelab.methods import masks
from prunelab.methods.masks import NMPattern


@dataclass
class SparseGPTConfig:
    blocksize: int = field(default=128, metadata={"help": "columns decided and updated together"})
    percdamp: float = field(default=0.01, metadata={
        "help": "dampening added to diag(H), as a fraction of its mean"})
    true_sequential: bool = field(default=False, metadata={
        "help": "prune q/k/v, then o, then up/gate, then down, re-collecting inputs in between"})
    max_damp_retries: int = field(default=6, metadata={
        "help": "times to raise dampening ×10 when Cholesky fails, before giving up"})


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, retries: int,
                           layer: str = "") -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, raising λ ×10 per failure (with a warning).

    Never falls back silently to something else: if no λ works, the user is told to act.
    """
    mean_diag = float(torch.mean(torch.diag(hessian)))
    damp = percdamp
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype)
    for attempt in range(retries + 1):
        try:
            lower = torch.linalg.cholesky(hessian + damp * mean_diag * eye)
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True), damp
        except torch.linalg.LinAlgError:
            if attempt == retries:
                break
            warnings.warn(f"SparseGPT: Hessian of {layer or 'a layer'} is not positive definite "
                          f"with dampening {damp:g}; retrying with {damp * 10:g}", stacklevel=2)
            damp *= 10
    raise PrunelabError(
        f"SparseGPT: the Hessian of {layer or 'a layer'} is not positive definite even with "
        f"dampening {damp:g}",
        "raise percdamp (--option percdamp=0.1) or use more calibration samples",
    )


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of tiny ops, and the matrices are small (≤ a few thousand
    wide): threads cost more than they save. With other work on the machine, two spinning
    threads made a 576×576 layer take 6 s instead of 0.07 s (measured here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    pattern: NMPattern | None = None, blocksize: int = 128,
                    percdamp: float = 0.01, max_damp_retries: int = 6,
                    layer: str = "") -> tuple[torch.Tensor, torch.Tensor, float]:
    """Return (new weight, pruned mask, dampening used). Pure: inputs are not modified."""
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(torch.float32).clone()
    rows, cols = W.shape

    # Inputs that never fire carry no information: their weights go, and H gets a unit
    # diagonal there so it stays invertible.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    pruned = torch.zeros_like(W, dtype=torch.bool)
    with _one_thread():
        Hinv, damp = inverse_hessian_factor(H, percdamp, max_damp_retries, layer)
        _prune_columns(W, Hinv, pruned, sparsity, pattern, blocksize)
    pruned[:, dead] = True  # zeroed above, whatever the mask said
    return W, pruned, damp


def _prune_columns(W: torch.Tensor, Hinv: torch.Tensor, pruned: torch.Tensor, sparsity: float,
                   pattern: NMPattern | None, blocksize: int) -> None:
    """The OBS sweep over column blocks; updates W and pruned in place.

    Column i's pruned weights leave an error e_i = w_i / [H⁻¹]_ii (w_i as updated by the
    columns before it), spread onto columns i.. of its row through row i of the factor U;
    other blocks get the block's errors at once. Unstructured: the block's mask is chosen up
    front. N:M: each group of M columns is decided on the weights as updated so far, as in
    the paper. The loop does two tensor operations per column (it is Python-bound: a layer
    has thousands of columns).
    """
    cols = W.shape[1]
    if pattern is not None:  # blocks must hold whole groups, or a group would be split
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W1 = W[:, start:end].clone()
        U1 = Hinv[start:end, start:end]
        diag1 = torch.diag(U1)
        errors = torch.zeros_like(W1)
        if pattern is None:
            mask1 = masks.lowest_in_matrix(W1 ** 2 / diag1.unsqueeze(0) ** 2, sparsity)
            scale = mask1 / diag1  # e_i = w_i · m_i / U_ii
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            scale = torch.zeros_like(W1)
        for i in range(end - start):
            if pattern is not None and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                mask1[:, group] = masks.lowest_n_of_m(
                    W1[:, group] ** 2 / diag1[group].unsqueeze(0) ** 2, pattern)
                scale[:, group] = mask1[:, group] / diag1[group]
            torch.mul(W1[:, i], scale[:, i], out=errors[:, i])
            # (column i itself is zeroed where pruned, up to rounding; set exactly below)
            W1[:, i:].addr_(errors[:, i], U1[i, i:], alpha=-1)
        W1[mask1] = 0
        W[:, start:end] = W1
        pruned[:, start:end] = mask1
        W[:, end:].addmm_(errors, Hinv[start:end, end:], alpha=-1)


@register
class SparseGPT(PruningMethod):
    name = "sparsegpt"
    summary = "OBS weight updates via the Cholesky factor of H⁻¹, mask per rows × 128 block"
    statistic = Statistic.HESSIAN
    Config = SparseGPTConfig

    def sequential_groups(self) -> bool:
        return self.config.true_sequential

    def prune_layer(self, weight, stats: LayerStats, target: LayerTarget):
        if self.config.blocksize < 1 or self.config.percdamp <= 0 or not math.isfinite(
                self.config.percdamp):
            raise PrunelabError("SparseGPT needs blocksize ≥ 1 and percdamp > 0",
                                "e.g. --option blocksize=128 --option percdamp=0.01")
        new_weight, pruned, damp = sparsegpt_prune(
            weight, stats.hessian, target.sparsity, target.pattern, self.config.blocksize,
            self.config.percdamp, self.config.max_damp_retries, target.name)
        return LayerDecision(new_weight, pruned, {"percdamp_used": damp})
