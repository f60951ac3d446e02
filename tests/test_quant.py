"""Weight quantization: RTN and GPTQ against transcriptions of their rules, joint compression
(pruned weights stay exactly zero), the engine keeping codes, and bad options."""

import pytest
import torch

from prunelab import arch
from prunelab.api import check_prune_args, prune
from prunelab.engine import prune_blocks
from prunelab.errors import PrunelabError
from prunelab.methods import masks
from prunelab.methods.base import LayerStats, LayerTarget, make_method
from prunelab.methods.gptq import gptq_quantize
from prunelab.methods.quant import (dequantize, pruned_bits_per_weight, quantize_rtn,
                                    quantized_bits_per_weight)
from prunelab.methods.sparsegpt import sparsegpt_prune
from prunelab.testing import tiny_loaded, tiny_model


def _layer(rows=24, cols=128, tokens=800, seed=3):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=gen) @ (torch.eye(cols) + 0.3 * torch.randn(
        cols, cols, generator=gen)) * torch.rand(cols, generator=gen) * 3
    W = torch.randn(rows, cols, generator=gen)
    return W, X, 2 * X.t() @ X / X.shape[0]


def _reference_grid(x, bits, symmetric):
    """GPTQ's reference quantizer (find_params, weight=True, per row), written out; its
    symmetric case with the range taken symmetric always (see prunelab.methods.quant)."""
    maxq = 2 ** bits - 1
    zero_row = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1)[0], zero_row)
    xmax = torch.maximum(x.max(1)[0], zero_row)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    both = (xmin == 0) & (xmax == 0)
    xmin[both], xmax[both] = -1, 1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def _reference_quantize(x, scale, zero, bits):
    q = torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1)
    return scale * (q - zero)


def _reference_gptq(W, H, bits, groupsize, blocksize, percdamp, actorder, symmetric):
    """IST-DASLab/gptq's `fasterquant`, transcribed (static groups under act-order)."""
    W, H = W.clone(), H.clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if groupsize is None:
        scale, zero = _reference_grid(W, bits, symmetric)
    else:
        groups = [_reference_grid(W[:, i:i + groupsize], bits, symmetric)
                  for i in range(0, cols, groupsize)]
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if groupsize is not None:
                if actorder:
                    scale, zero = groups[int(perm[i1 + i]) // groupsize]
                elif (i1 + i) % groupsize == 0:
                    scale, zero = _reference_grid(W[:, i1 + i:i1 + i + groupsize], bits,
                                                  symmetric)
            q = _reference_quantize(w.unsqueeze(1), scale, zero, bits).flatten()
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    return Q


@pytest.mark.parametrize("bits", [8, 6, 4, 3, 2])
@pytest.mark.parametrize("group_size,symmetric", [(None, False), (32, False), (64, True)])
def test_rtn_equals_the_reference_grid_and_rounding(bits, group_size, symmetric):
    W, _, _ = _layer(rows=8, cols=128)
    W[0, :32] = 0  # an all-zero group
    ours = quantize_rtn(W, bits, group_size, symmetric)
    size = group_size or W.shape[1]
    expected = torch.cat([_reference_quantize(W[:, i:i + size],
                                              *_reference_grid(W[:, i:i + size], bits,
                                                               symmetric), bits)
                          for i in range(0, W.shape[1], size)], dim=1)
    assert torch.equal(ours.dequantize(), expected)
    assert int(ours.codes.max()) <= 2 ** bits - 1
    assert ours.scales.shape == (8, W.shape[1] // size)
    assert torch.equal(ours.dequantize(), dequantize(ours.codes, ours.scales, ours.zeros, size))
    if symmetric:
        assert (ours.zeros == 2 ** (bits - 1)).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_keeps_pruned_weights_exactly_zero(symmetric):
    W, _, _ = _layer()
    W[:, ::3] = 0
    W[2] = W[2].abs() + 0.1  # a row with no negative weight: zero is still on its grid
    W[2, ::3] = 0
    for bits in (2, 3, 4, 8):
        out = quantize_rtn(W, bits, 32, symmetric).dequantize()
        assert (out[W == 0] == 0).all()


@pytest.mark.parametrize("group_size,actorder", [(None, False), (32, False), (16, False),
                                                 (None, True), (32, True)])
def test_gptq_equals_the_reference_loop(group_size, actorder):
    W, _, H = _layer(rows=16, cols=96, seed=5)
    expected = _reference_gptq(W, H, 4, group_size, 32, 0.01, actorder, False)
    ours, quantized, dead, damp = gptq_quantize(W, H, 4, group_size, blocksize=32,
                                                act_order=actorder)
    assert torch.equal(ours, quantized.dequantize())
    # The reference subtracts an outer product made by matmul where the shared sweep uses
    # a fused rank-1 update: the same arithmetic up to float rounding, which can move a
    # weight that sits on a rounding boundary by one level.
    same = torch.isclose(ours, expected, atol=1e-5)
    assert same.float().mean() > 0.995, same.float().mean()
    assert not dead.any() and damp == 0.01


def test_gptq_beats_round_to_nearest_on_the_layer_output():
    W, X, H = _layer(rows=32, cols=128, tokens=1024, seed=4)
    for bits, group in [(4, None), (3, 32), (4, 64)]:
        gptq, _, _, _ = gptq_quantize(W, H, bits, group)
        rtn = quantize_rtn(W, bits, group, False).dequantize()
        error = {name: torch.linalg.norm(X @ W.t() - X @ w.t())
                 for name, w in (("gptq", gptq), ("rtn", rtn))}
        assert error["gptq"] < 0.85 * error["rtn"], (bits, group, error)


def test_act_order_keeps_static_group_scales_in_column_order():
    W, _, H = _layer(rows=8, cols=64, seed=6)
    _, quantized, _, _ = gptq_quantize(W, H, 4, 16, act_order=True)
    assert quantized.act_order and quantized.group_index is None
    # each group's scale is the one found on that group's own columns before the sweep
    expected, _ = _reference_grid(W[:, 16:32], 4, False)
    assert torch.equal(quantized.scales[:, 1], expected.flatten())
    # without static groups, grids follow the sweep and a column-to-group index is kept
    new, dynamic, _, _ = gptq_quantize(W, H, 4, 16, act_order=True, static_groups=False)
    assert dynamic.group_index is not None
    assert torch.equal(new, dynamic.dequantize())


def test_gptq_after_pruning_keeps_the_zeros():
    W, X, H = _layer(rows=16, cols=64)
    pruned, mask, _ = sparsegpt_prune(W, H, 0.5)
    out, quantized, _, _ = gptq_quantize(pruned, H, 3, 32)
    assert (out[pruned == 0] == 0).all()
    assert (out[mask] == 0).all()
    assert torch.equal(out, quantized.dequantize())


@pytest.mark.parametrize("pattern", [None, masks.NMPattern(2, 4)])
def test_sparsegpt_joint_mode_prunes_and_quantizes_in_one_sweep(pattern):
    W, X, H = _layer(rows=16, cols=64)
    method = make_method("sparsegpt", {"bits": "4", "group_size": "32"})
    decision = method.prune_layer(W.clone(), LayerStats(1, hessian=H),
                                  LayerTarget("x", 0.5, pattern))
    assert decision.quantized is not None
    assert torch.equal(decision.weight, decision.quantized.dequantize())
    assert (decision.weight[decision.pruned] == 0).all()
    assert decision.pruned.float().mean() == 0.5
    if pattern is not None:
        kept = (~decision.pruned).reshape(16, -1, 4).sum(-1)
        assert (kept == 2).all()
    # pruning alone, the same mask rule: the joint weights are its kept weights on a grid
    levels = decision.quantized.codes.float()
    assert torch.equal(levels, levels.round())


def test_the_engine_writes_dequantized_weights_and_keeps_the_codes():
    model = tiny_model("llama")
    windows = torch.randint(4, 260, (4, 16), generator=torch.Generator().manual_seed(0))
    records = prune_blocks(model, make_method("gptq", {"bits": "4", "group_size": "32"}), 0.0,
                           None, windows, batch_size=2, progress=False)
    names = list(arch.named_prunable_layers(model))
    assert sorted(records.quantized) == sorted(names)
    modules = dict(model.named_modules())
    for name, quantized in records.quantized.items():
        weight = modules[name].weight.data
        # an fp32 weight holds its codes: only the grid is kept, the codes are read off it
        assert quantized.codes is None
        codes = quantized.codes_for(weight)
        assert codes.dtype == torch.uint8 and quantized.bits == 4 and int(codes.max()) <= 15
        assert torch.equal(weight, quantized.dequantize(weight))


@pytest.mark.parametrize("dtype,bits,kept", [(torch.bfloat16, 4, False), (torch.float16, 8, False),
                                             (torch.bfloat16, 8, True)])
def test_codes_read_off_a_low_precision_weight_are_the_codes(dtype, bits, kept):
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    record = quantize_rtn(weight, bits, 32, symmetric=False)
    stored = record.dequantize().to(dtype)  # what a bf16/fp16 model holds
    light = record.grid_only(dtype)
    assert (light.codes is not None) == kept  # bf16 cannot resolve 255 levels: codes kept
    if not kept:
        assert torch.equal(light.codes_for(stored), record.codes)


def test_prune_then_quantize_through_the_api_keeps_every_pruned_weight_zero():
    loaded = tiny_loaded("llama")
    windows_text = "calibration text " * 200
    calib = _text_file(windows_text)
    prune(loaded, "wanda", 0.5, calibration=calib, progress=False, batch_size=2)
    zeros = {n: (p == 0).clone() for n, p in loaded.model.named_parameters()}
    for method in ("rtn", "gptq"):
        result = prune(loaded, method, calibration=calib, progress=False, batch_size=2,
                       bits=3, group_size=32)
        assert result.sparsity == 0.0 and len(result.quantized) == 14
        for name, param in loaded.model.named_parameters():
            assert (param[zeros[name]] == 0).all(), (method, name)
    assert result.overall_sparsity >= 0.5


def _text_file(text, _cache={}):
    import tempfile
    from pathlib import Path

    if text not in _cache:
        path = Path(tempfile.mkdtemp()) / "calib.txt"
        path.write_text(text)
        _cache[text] = str(path)
    from prunelab.data.corpora import CalibrationConfig

    return CalibrationConfig(_cache[text], n_samples=4, seqlen=32)


def test_bits_per_weight():
    assert quantized_bits_per_weight(4, 128, False) == 4 + 20 / 128
    assert quantized_bits_per_weight(4, 128, True) == 4 + 16 / 128
    assert quantized_bits_per_weight(8, None, True, width=576) == 8 + 16 / 576
    assert pruned_bits_per_weight(0.0) == 16
    assert pruned_bits_per_weight(0.5) == 9
    assert abs(pruned_bits_per_weight(0.5, 2, 4) - (8 + 0.6462406)) < 1e-6


@pytest.mark.parametrize("method,options,sparsity,fragment", [
    ("rtn", {"bits": "5"}, None, "5 bits is not supported"),
    ("gptq", {"bits": "16"}, None, "16 bits is not supported"),
    ("rtn", {"group_size": "0"}, None, "group size 0"),
    ("rtn", {"bits": "4"}, 0.5, "quantizes weights and prunes none"),
    ("sparsegpt", {"bits": "7"}, 0.5, "7 bits is not supported"),
])
def test_bad_quantization_options_fail_before_any_model(method, options, sparsity, fragment):
    with pytest.raises(PrunelabError, match=fragment):
        check_prune_args(method, sparsity, None, None, options)


def test_a_group_size_that_does_not_divide_a_width_fails_before_any_work():
    loaded = tiny_loaded("llama")  # widths 64 and 128
    before = {n: p.clone() for n, p in loaded.model.named_parameters()}
    with pytest.raises(PrunelabError, match="group size 48 does not divide the input width 64"):
        prune(loaded, "rtn", bits=4, group_size=48, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())


def test_the_python_api_quantizes_and_keeps_the_codes():
    import prunelab

    loaded = tiny_loaded("llama")
    result = prunelab.quantize(loaded, "rtn", bits=8, group_size=None, progress=False)
    assert result.method == "rtn" and result.options["bits"] == 8
    assert all(q.per_channel and q.bits == 8 for q in result.quantized.values())
