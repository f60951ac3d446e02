"""The optimal-brain-surgeon sweep serves pruning (SparseGPT) and quantization (GPTQ-style)."""

import pytest
import torch

from prunelab.methods import masks
from prunelab.methods.obs import (inverse_hessian_factor, invert_lower_triangular_, obs_solve,
                                  reverse_rows_and_columns_, sweep_columns, transpose_)
from prunelab.methods.sparsegpt import _PruneNofM, _PruneUnstructured


def _layer(rows=24, cols=96, tokens=600, seed=3):
    gen = torch.Generator().manual_seed(seed)
    # Correlated input features, as a layer's inputs are: what makes error feedback pay.
    X = torch.randn(tokens, cols, generator=gen) @ (torch.eye(cols) + 0.3 * torch.randn(
        cols, cols, generator=gen)) * torch.rand(cols, generator=gen) * 3
    W = torch.randn(rows, cols, generator=gen)
    return W, X, 2 * X.t() @ X / X.shape[0]


def _fused_prune_loop(W, U, pruned, sparsity, pattern, blocksize):
    """The SparseGPT column loop as it was written before the rule objects: mask choice and
    error in one loop body, every column's update applied to the whole rest of its block.
    The sweep with the pruning rules (which applies it slice by slice) must take the same
    decisions and equal it up to float rounding."""
    cols = W.shape[1]
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W1 = W[:, start:end].clone()
        U1 = U[start:end, start:end]
        diag1 = torch.diag(U1)
        errors = torch.zeros_like(W1)
        if pattern is None:
            mask1 = masks.lowest_in_matrix(W1 ** 2 / diag1.unsqueeze(0) ** 2, sparsity)
            scale = mask1 / diag1
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
            W1[:, i:].addr_(errors[:, i], U1[i, i:], alpha=-1)
        W1[mask1] = 0
        W[:, start:end] = W1
        pruned[:, start:end] = mask1
        W[:, end:].addmm_(errors, U[start:end, end:], alpha=-1)


@pytest.mark.parametrize("size,leaf,band", [(1, 128, 256), (7, 128, 256), (129, 128, 256),
                                            (300, 16, 7), (513, 64, 100)])
def test_lower_triangular_inverse_is_the_solve_against_the_identity(size, leaf, band):
    spread = torch.randn(size, 2 * size, generator=torch.Generator().manual_seed(size),
                         dtype=torch.float64)
    lower = torch.linalg.cholesky(spread @ spread.T / size + torch.eye(size, dtype=torch.float64))
    expected = torch.linalg.solve_triangular(lower, torch.eye(size, dtype=torch.float64),
                                             upper=False)
    inverse = invert_lower_triangular_(lower, leaf=leaf, band=band)
    assert inverse.data_ptr() == lower.data_ptr()
    torch.testing.assert_close(inverse, expected, rtol=1e-10, atol=1e-12)
    assert inverse.triu(1).eq(0).all()


@pytest.mark.parametrize("size,rows_at_once", [(1, 256), (2, 1), (7, 2), (8, 3), (9, 256), (600, 256)])
def test_reversing_in_place_is_flip(size, rows_at_once):
    matrix = torch.randn(size, size)
    expected = matrix.flip(0, 1)
    assert torch.equal(reverse_rows_and_columns_(matrix, rows_at_once), expected)


@pytest.mark.parametrize("size,rows_at_once", [(1, 256), (7, 2), (9, 4), (600, 256)])
def test_transposing_in_place_is_mT(size, rows_at_once):
    matrix = torch.randn(size, size)
    expected = matrix.mT.clone()
    assert torch.equal(transpose_(matrix, rows_at_once), expected)


@pytest.mark.parametrize("sparsity,pattern,blocksize", [
    (0.5, None, 128), (0.7, None, 32), (0.3, None, 50), (0.5, masks.NMPattern(2, 4), 32),
    (0.5, masks.NMPattern(4, 8), 16), (0.5, masks.NMPattern(3, 6), 36),
    (0.5, masks.NMPattern(2, 4), 128)])
def test_pruning_rules_equal_the_fused_loop(sparsity, pattern, blocksize):
    W, _, H = _layer()
    U, _ = inverse_hessian_factor(H, 0.01, 0)
    expected_W, expected_mask = W.clone(), torch.zeros_like(W, dtype=torch.bool)
    _fused_prune_loop(expected_W, U, expected_mask, sparsity, pattern, blocksize)
    ours, mask = W.clone(), torch.zeros_like(W, dtype=torch.bool)
    rule = _PruneUnstructured(mask, sparsity) if pattern is None else _PruneNofM(mask, pattern)
    sweep_columns(ours, U, rule, blocksize)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(ours, expected_W, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours == 0, expected_W == 0)


class _RoundToGrid:
    """GPTQ's rule with a symmetric per-row grid: t_i = clamp(round(w_i / s), ±q_max) · s."""

    def __init__(self, scale, max_level):
        self.scale, self.max_level = scale, max_level

    def quantize(self, w):
        levels = torch.clamp(torch.round(w / self.scale), -self.max_level, self.max_level)
        return levels * self.scale

    def begin_block(self, W1, diag, columns):
        self.diag = diag
        self.targets = torch.empty_like(W1)

    def column_error(self, i, W1, out):
        self.targets[:, i] = self.quantize(W1[:, i])
        torch.div(W1[:, i] - self.targets[:, i], self.diag[i], out=out)

    def end_block(self, W1, columns):
        W1.copy_(self.targets)


@pytest.mark.parametrize("bits", [3, 4])
def test_a_rounding_rule_gives_gptq_which_beats_round_to_nearest(bits):
    W, X, H = _layer(rows=32, cols=64, tokens=1024, seed=bits)
    max_level = 2 ** (bits - 1) - 1
    rule = _RoundToGrid(W.abs().amax(dim=1) / max_level, max_level)
    rtn = rule.quantize(W.t()).t()  # (the grid is per row: columns broadcast against it)
    gptq, dead, _ = obs_solve(W, H, rule, blocksize=16, label="GPTQ")
    assert not dead.any()
    levels = gptq / rule.scale[:, None]
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # every weight is on the grid
    assert levels.abs().max() <= max_level + 1e-4
    error_gptq = torch.linalg.norm(X @ W.t() - X @ gptq.t())
    error_rtn = torch.linalg.norm(X @ W.t() - X @ rtn.t())
    assert error_gptq < 0.9 * error_rtn, (error_gptq, error_rtn)


def test_a_rule_that_keeps_every_column_changes_nothing():
    class _Keep:
        def begin_block(self, W1, diag, columns):
            pass

        def column_error(self, i, W1, out):
            out.zero_()

        def end_block(self, W1, columns):
            pass

    W, _, H = _layer()
    same, _, _ = obs_solve(W, H, _Keep(), blocksize=40)
    assert torch.equal(same, W)


def test_obs_solve_is_pure_and_zeroes_dead_inputs():
    W, X, _ = _layer()
    X[:, 5] = 0
    H = 2 * X.t() @ X / X.shape[0]
    W0, H0 = W.clone(), H.clone()
    mask = torch.zeros_like(W, dtype=torch.bool)
    new, dead, damp = obs_solve(W, H, _PruneUnstructured(mask, 0.5), blocksize=32)
    assert torch.equal(W, W0) and torch.equal(H, H0)
    assert dead.nonzero().flatten().tolist() == [5] and (new[:, 5] == 0).all()
    assert damp == 0.01


@pytest.mark.parametrize("method", ["sparsegpt", "gptq"])
def test_layers_reading_one_input_share_one_factor(method, monkeypatch):
    """q/k/v (and gate/up) share a Hessian object: its factor is computed once per block, and
    the weights are those of factoring it for every layer."""
    from prunelab.engine import prune_blocks
    from prunelab.methods import obs
    from prunelab.methods.registry import make_method
    from prunelab.testing import tiny_model

    windows = torch.randint(0, 260, (6, 24), generator=torch.Generator().manual_seed(0))
    options = {"bits": 4, "group_size": 16} if method == "gptq" else {}
    factored = []
    real = obs.inverse_hessian_factor
    monkeypatch.setattr(obs, "inverse_hessian_factor",
                        lambda *a, **k: factored.append(1) or real(*a, **k))
    shared = tiny_model()
    prune_blocks(shared, make_method(method, options), 0.0 if method == "gptq" else 0.5,
                 None, windows, batch_size=3, progress=False)
    per_block = len(factored) / len(shared.model.layers)
    monkeypatch.setattr(obs.Factors, "get", lambda self, hessian, key, compute: compute())
    factored.clear()
    alone = tiny_model()
    prune_blocks(alone, make_method(method, options), 0.0 if method == "gptq" else 0.5,
                 None, windows, batch_size=3, progress=False)
    assert (per_block, len(factored) / len(alone.model.layers)) == (4, 7)
    for (name, a), b in zip(shared.named_parameters(), alone.parameters()):
        assert torch.equal(a, b), name
