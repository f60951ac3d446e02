"""Faithfulness of the methods to their papers, checked against direct transcriptions."""

import ast
import subprocess
import sys
import warnings
from typing import Literal

import pytest
import torch

from prunelab import arch
from prunelab.engine import prune_blocks
from prunelab.errors import PrunelabError
from prunelab.methods import masks
from prunelab.methods.base import LayerStats, LayerTarget, make_method
from prunelab.methods.magnitude import _kth_smallest_abs
from prunelab.methods.registry import convert_option
from prunelab.methods.sparsegpt import sparsegpt_prune
from prunelab.testing import tiny_model


def _calibration(n=6, length=24, seed=0):
    return torch.randint(4, 260, (n, length), generator=torch.Generator().manual_seed(seed))


def _linear_inputs(model, block_index, windows):
    """Inputs of each linear of one block, from full forward passes of the whole model."""
    block = arch.find_blocks(model).blocks[block_index]
    layers = arch.prunable_layers(block)
    seen = {name: [] for name in layers}
    handles = [m.register_forward_hook(lambda mod, a, o, n=name: seen[n].append(a[0].detach()))
               for name, m in layers.items()]
    with torch.no_grad():
        for row in windows:
            model(input_ids=row[None], use_cache=False)
    for h in handles:
        h.remove()
    return layers, {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for n, xs in seen.items()}


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_wanda_mask_equals_transcription_of_the_paper(sparsity):
    windows = _calibration()
    ours, reference = tiny_model("llama"), tiny_model("llama")
    prune_blocks(ours, make_method("wanda"), sparsity, None, windows, batch_size=4, progress=False)

    # The paper's rule, written out plainly: block by block (each block sees the inputs
    # produced by the already-pruned blocks before it), S_ij = |W_ij| * ||X_j||_2, and in
    # each row the int(C * s) lowest scores are zeroed.
    n_blocks = len(arch.find_blocks(reference).blocks)
    for b in range(n_blocks):
        layers, inputs = _linear_inputs(reference, b, windows)
        for name, layer in layers.items():
            W = layer.weight.data
            score = W.abs() * inputs[name].pow(2).sum(0).sqrt()[None, :]
            k = int(W.shape[1] * sparsity)
            for row in range(W.shape[0]):
                order = sorted(range(W.shape[1]), key=lambda j: (score[row, j].item(), j))
                W[row, order[:k]] = 0
    for (name, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters()):
        assert torch.equal(a == 0, b == 0), name


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda():
    model = tiny_model("llama")
    windows = _calibration(n=8, length=32)
    layers, inputs = _linear_inputs(model, 0, windows)
    for name, layer in layers.items():
        W, X = layer.weight.data.clone(), inputs[name]
        errors = {}
        for method in ("magnitude", "wanda", "sparsegpt"):
            stats = LayerStats(X.shape[0], input_sq_sum=X.pow(2).sum(0),
                               hessian=2 * X.t() @ X / X.shape[0])
            decision = make_method(method).prune_layer(W.clone(), stats,
                                                       LayerTarget(name, 0.5, None))
            pruned = decision.weight.clone()
            pruned[decision.pruned] = 0
            assert (pruned == 0).float().mean() >= 0.5
            errors[method] = torch.linalg.norm(X @ W.t() - X @ pruned.t()).item()
        assert errors["sparsegpt"] < errors["wanda"], (name, errors)
        assert errors["sparsegpt"] < errors["magnitude"], (name, errors)


def _sparsegpt_transcription(W, H, sparsity, nm, blocksize=128, percdamp=0.01):
    """Algorithm 1 of the SparseGPT paper written out plainly: one column at a time."""
    W, H = W.clone(), H.clone()
    cols = W.shape[1]
    H += percdamp * torch.diag(H).mean() * torch.eye(cols)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        if nm is None:
            score = W[:, start:end] ** 2 / torch.diag(U)[start:end] ** 2
            k = int(score.numel() * sparsity)
            flat = torch.zeros(score.numel(), dtype=torch.bool)
            flat[torch.sort(score.flatten(), stable=True).indices[:k]] = True
            mask[:, start:end] = flat.view_as(score)
        for i in range(start, end):
            if nm is not None and (i - start) % nm[1] == 0:
                score = W[:, i:i + nm[1]] ** 2 / torch.diag(U)[i:i + nm[1]] ** 2
                lowest = torch.sort(score, dim=1, stable=True).indices[:, :nm[1] - nm[0]]
                mask[:, i:i + nm[1]].scatter_(1, lowest, True)
            err = torch.where(mask[:, i], W[:, i], 0.0) / U[i, i]
            W[:, i:] -= err[:, None] * U[i, i:][None, :]  # also sets W[:, i] to 0 where pruned
            W[mask[:, i], i] = 0
    return W, mask


@pytest.mark.parametrize("sparsity,nm,blocksize", [
    (0.5, None, 128), (0.7, None, 32), (0.3, None, 50), (0.5, (2, 4), 128), (0.5, (4, 8), 16),
    (0.5, (1, 3), 128)])
def test_sparsegpt_equals_the_column_by_column_algorithm(sparsity, nm, blocksize):
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(400, 96, generator=gen) * torch.rand(96, generator=gen) * 3
    W = torch.randn(40, 96, generator=gen)
    H = 2 * X.t() @ X / X.shape[0]
    pattern = masks.NMPattern(*nm) if nm else None
    ours, pruned, _ = sparsegpt_prune(W, H, sparsity, pattern, blocksize=blocksize)
    if nm is not None:  # (blocks are cut to whole groups: 128 → 126 for M = 3)
        blocksize -= blocksize % nm[1]
    expected, expected_mask = _sparsegpt_transcription(W, H, sparsity, nm, blocksize)
    assert torch.equal(pruned, expected_mask)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    if nm is not None:
        assert ((~pruned).view(40, -1, nm[1]).sum(-1) == nm[0]).all()


def test_sparsegpt_handles_dead_inputs():
    W = torch.randn(8, 16)
    X = torch.randn(64, 16)
    X[:, 3] = 0  # an input that never fires
    new, pruned, _ = sparsegpt_prune(W, 2 * X.t() @ X / 64, 0.5)
    assert pruned[:, 3].all() and (new[:, 3] == 0).all()


def test_sparsegpt_raises_dampening_with_a_warning():
    W = torch.randn(4, 8)
    x = torch.randn(8, 1)
    H = x @ x.t()
    # Rank one with slightly negative eigenvalues, as round-off leaves in real Hessians:
    # 1% dampening is not enough, 10% is.
    H -= 0.05 * H.diag().mean() * torch.eye(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, damp = sparsegpt_prune(W, H, 0.5, percdamp=0.01, max_damp_retries=8)
    assert damp > 0.01
    assert any("not positive definite" in str(w.message) for w in caught)


def test_sparsegpt_gives_up_loudly_not_silently():
    H = -torch.eye(8)
    with pytest.raises(PrunelabError, match="not positive definite"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsegpt_prune(torch.randn(4, 8), H, 0.5, max_damp_retries=2)


def test_global_magnitude_uses_one_threshold_with_exact_count():
    model = tiny_model("llama")
    records = prune_blocks(model, make_method("magnitude-global"), 0.4, None, None,
                           progress=False)
    total = sum(r.numel for r in records)
    assert sum(r.zeros_after for r in records) == int(total * 0.4)
    matrices = [arch.weight_matrix(m) for b in arch.find_blocks(model).blocks
                for m in arch.prunable_layers(b).values()]
    largest_pruned = max(m.abs()[m == 0].max() for m in matrices if (m == 0).any())
    smallest_kept = min(m.abs()[m != 0].min() for m in matrices)
    assert largest_pruned <= smallest_kept
    assert len({round(r.achieved_sparsity, 3) for r in records}) > 1  # layers differ


def test_kth_smallest_matches_sort():
    mats = [torch.randn(7, 9), torch.randn(3, 5)]
    flat = torch.cat([m.abs().flatten() for m in mats]).sort().values
    for k in (1, 10, 50, 78):
        assert _kth_smallest_abs(mats, k) == flat[k - 1].item()


def test_magnitude_band_prunes_only_the_band():
    model = tiny_model("llama")
    before = {n: arch.weight_matrix(m).clone() for b in arch.find_blocks(model).blocks
              for n, m in arch.prunable_layers(b).items()}
    prune_blocks(model, make_method("magnitude-band", {"band_low": 0.2}), 0.1, None, None,
                 progress=False)
    layer = arch.prunable_layers(arch.find_blocks(model).blocks[-1])
    for name, module in layer.items():
        W0, W = before[name].flatten(), arch.weight_matrix(module).flatten()
        ranks = torch.empty_like(W0, dtype=torch.long)
        ranks[torch.sort(W0.abs(), stable=True).indices] = torch.arange(W0.numel())
        band = (ranks >= int(W0.numel() * 0.2)) & (ranks < int(W0.numel() * 0.3))
        assert torch.equal(W == 0, band)


def test_unknown_method_and_option_are_user_errors():
    with pytest.raises(PrunelabError, match="unknown method"):
        make_method("nope")
    with pytest.raises(PrunelabError, match="no option"):
        make_method("wanda", {"alpha": 1})
    with pytest.raises(PrunelabError, match="not a float"):
        make_method("sparsegpt", {"percdamp": "lots"})
    assert make_method("sparsegpt", {"true_sequential": "true"}).config.true_sequential is True


def test_option_with_none_default_is_converted_by_its_annotation():
    method = make_method("magnitude-band", {"band_low": "0.2", "band_high": "0.3"})
    assert method.config.band_high == 0.3 and isinstance(method.config.band_high, float)
    assert make_method("magnitude-band", {"band_high": "none"}).config.band_high is None
    with pytest.raises(PrunelabError, match=r"band_high='lots'.*float"):
        make_method("magnitude-band", {"band_high": "lots"})


@pytest.mark.parametrize("declared,value,expected", [
    (int, "128", 128), (int, 64, 64), (int, 32.0, 32), (float, "0.02", 0.02), (float, 1, 1.0),
    (bool, "off", False), (bool, True, True), (str, "c4", "c4"), (float | None, None, None),
    (float | None, "NULL", None), (float | None, "0.5", 0.5), (int | None, "3", 3),
    (Literal["row", "matrix"], "row", "row"), (Literal[2, 4], "4", 4), (str | None, "x", "x")])
def test_options_are_converted_by_their_declared_type(declared, value, expected):
    converted = convert_option("m", "k", value, declared)
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize("declared,value,words", [
    (int, "1.5", "an int"), (int, True, "an int"), (float, "lots", "a float"),
    (float, None, "a float"), (bool, "maybe", "a bool"), (float | None, "x", "a float or none"),
    (Literal["row", "matrix"], "column", "one of 'row', 'matrix'")])
def test_a_bad_option_value_names_option_value_and_type(declared, value, words):
    with pytest.raises(PrunelabError) as caught:
        convert_option("m", "k", value, declared)
    assert f"option k={value!r} of method m is not {words}" in str(caught.value)


@pytest.mark.parametrize("method,options,match", [
    ("sparsegpt", {"blocksize": "0"}, "blocksize=0"),
    ("sparsegpt", {"percdamp": "0"}, "percdamp=0.0"),
    ("sparsegpt", {"percdamp": "nan"}, "percdamp=nan"),
    ("sparsegpt", {"percdamp": "inf"}, "percdamp=inf"),
    ("sparsegpt", {"max_damp_retries": -1}, "max_damp_retries=-1"),
    ("magnitude-band", {"band_low": 1.0}, "magnitude band"),
    ("magnitude-band", {"band_low": 0.3, "band_high": 0.2}, "magnitude band")])
def test_bad_option_values_fail_when_the_method_is_made(method, options, match):
    with pytest.raises(PrunelabError, match=match):
        make_method(method, options)


def test_registry_is_reachable_from_the_package_and_from_base():
    import prunelab.methods as package
    from prunelab.methods import base

    names = ["magnitude", "magnitude-band", "magnitude-global", "sparsegpt", "wanda"]
    assert [m.name for m in package.list_methods()] == [m.name for m in base.list_methods()]
    assert set(names) <= {m.name for m in package.list_methods()}
    assert type(package.make_method("wanda")) is type(base.make_method("wanda"))


@pytest.mark.parametrize("first", ["prunelab.methods.sparsegpt", "prunelab.methods.registry"])
def test_any_import_order_finds_every_builtin_method(first):
    code = (f"import {first}\nfrom prunelab.methods.base import list_methods, make_method\n"
            "print(sorted(m.name for m in list_methods())); make_method('magnitude-band')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    listed = set(ast.literal_eval(done.stdout))
    assert {"magnitude", "magnitude-band", "magnitude-global", "sparsegpt", "wanda", "owl",
            "gblm", "dsnot", "besa", "wanda-variant", "random", "sparsity-map", "rtn", "gptq",
            "flap", "wanda-sp", "magnitude-sp", "seap"} <= listed


def test_needs_calibration():
    assert make_method("wanda").needs_calibration and make_method("sparsegpt").needs_calibration
    assert not make_method("magnitude").needs_calibration
    assert not make_method("magnitude-global").needs_calibration


def test_layer_stats_are_a_read_only_mapping():
    stats = LayerStats(10, {"hessian": torch.eye(2)}, input_sq_sum=torch.ones(2))
    assert stats.n_tokens == 10 and set(stats) == {"hessian", "input_sq_sum"}
    assert stats.hessian is stats["hessian"]
    with pytest.raises(KeyError, match="statistics"):
        stats["input_mean_var"]
    with pytest.raises(AttributeError, match="statistics"):
        stats.input_mean_var
    with pytest.raises(TypeError):
        stats["hessian"] = torch.zeros(2)
