"""OWL, GBLM, DSnoT, BESA, Wanda's variant, random and per-layer maps against their rules."""

import json

import numpy as np
import pytest
import torch

from prunelab import api, arch, engine
from prunelab.engine import prune_blocks
from prunelab.errors import PrunelabError
from prunelab.methods.base import LayerStats, LayerTarget, make_method
from prunelab.methods.besa import _LayerAllocation, exact_counts
from prunelab.methods.dsnot import dsnot_refine
from prunelab.methods.masks import NMPattern
from prunelab.methods.owl import nm_pruned_counts, outlier_ratio, owl_sparsities
from prunelab.methods.wanda_variant import variant_mask
from prunelab.testing import dense_layer_inputs, tiny_model


def _windows(n=6, length=24, seed=0):
    return torch.randint(4, 260, (n, length), generator=torch.Generator().manual_seed(seed))


# --- OWL ---------------------------------------------------------------------------------

def _owl_reference(block_scores, sparsity, lam, m):
    """luuyin/OWL's rule written out: per block, concatenate every layer's Wanda scores, count
    those above m × their mean (in %), map (r - min)/(max - min)·2λ, shift to mean 1 - S."""
    ratios = []
    for scores in block_scores:
        flat = np.concatenate([s.flatten().numpy().astype(np.float64) for s in scores])
        ratios.append((flat > flat.mean() * m).sum() / flat.size * 100)
    ratios = np.array(ratios)
    density = (ratios - ratios.min()) * (1 / (ratios.max() - ratios.min()) * lam * 2)
    density = density - density.mean() + (1 - sparsity)
    return 1 - density


def test_owl_plan_equals_the_reference_rule_and_prunes_like_wanda_at_those_sparsities():
    windows = _windows()
    model, reference = tiny_model("gemma3"), tiny_model("gemma3")  # three blocks
    inputs = dense_layer_inputs(tiny_model("gemma3"), windows)
    layers = arch.named_prunable_layers(reference)
    method = make_method("owl", {"lam": 0.1, "m": 2})
    records = prune_blocks(model, method, 0.6, None, windows, batch_size=2, progress=False)

    blocks = sorted({int(n.split(".")[2]) for n in layers})
    block_scores = [[layers[n].weight.detach().abs() * inputs[n].pow(2).sum(0).sqrt()
                     for n in layers if int(n.split(".")[2]) == b] for b in blocks]
    expected = _owl_reference(block_scores, 0.6, 0.1, 2)
    assert len(set(np.round(expected, 6))) == len(blocks)  # the blocks really differ
    for r in records:
        assert r.target_sparsity == pytest.approx(expected[int(r.name.split(".")[2])], abs=1e-9)
    sizes = {b: sum(r.numel for r in records if int(r.name.split(".")[2]) == b) for b in blocks}
    weighted = sum(expected[b] * sizes[b] for b in blocks) / sum(sizes.values())
    assert weighted == pytest.approx(0.6, abs=1e-12)  # equal blocks: the plain mean is S

    # ... and then each layer is exactly Wanda's mask at its block's sparsity.
    for r in records:
        assert r.zeros_after == r.rows * int(r.cols * r.target_sparsity), r
    entries = {str(b): float(expected[b]) for b in blocks}
    path = _write_map(entries)
    prune_blocks(reference, make_method("sparsity-map", {"file": str(path)}), 0.6, None,
                 windows, batch_size=2, progress=False)
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(a == 0, b == 0), name


def test_owl_weights_the_mean_by_parameter_count():
    sparsities = owl_sparsities([0.01, 0.05, 0.03], [100, 300, 600], 0.5, 0.08)
    assert sum(s * n for s, n in zip(sparsities, [100, 300, 600])) / 1000 == pytest.approx(0.5)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    assert sparsities[0] > sparsities[2] > sparsities[1]  # more outliers, less pruned
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 9.0])], 2.0) == 0.25


def test_owl_nm_gives_each_block_its_own_n_and_keeps_the_mean():
    assert nm_pruned_counts([0.3, 0.5, 0.7], [1, 1, 1], 4, 0.5) == [1, 2, 3]
    counts = nm_pruned_counts([0.43, 0.52, 0.55], [1, 1, 1], 4, 0.5)
    assert sum(counts) == 6
    model = tiny_model("gemma3")
    records = prune_blocks(model, make_method("owl", {"lam": 0.2, "m": 2}), 0.5,
                           NMPattern(2, 4), _windows(), batch_size=3, progress=False)
    kept = {}
    for r in records:
        weight = arch.weight_matrix(model.get_submodule(r.name))
        per_group = (weight != 0).reshape(r.rows, -1, 4).sum(-1)
        assert (per_group == per_group.flatten()[0]).all()  # one N per layer
        kept.setdefault(int(r.name.split(".")[2]), set()).add(int(per_group.flatten()[0]))
    assert all(len(ns) == 1 for ns in kept.values())  # ... and per block
    assert len({n for ns in kept.values() for n in ns}) > 1  # blocks differ
    assert sum(r.zeros_after for r in records) == sum(r.numel for r in records) // 2


@pytest.mark.parametrize("options,sparsity,pattern,fragment", [
    ({"lam": 0.3}, 0.8, None, "outside [0, 1)"),
    ({"lam": 0.2}, 0.1, None, "outside [0, 1)"),
    ({"lam": 0.45}, None, "2:4", "N:M needs 1 to 3"),
    ({"lam": -0.1}, 0.5, None, "lam=-0.1"),
    ({"m": 0}, 0.5, None, "m=0"),
    ({"base": "nope"}, 0.5, None, "unknown method"),
    ({"base": "owl"}, 0.5, None, "its own base"),
    # A global threshold decides each layer's sparsity itself: OWL's allocation would be lost.
    ({"base": "magnitude-global"}, 0.5, None, "sets its own layer sparsities"),
])
def test_owl_bad_options_are_refused_before_the_model(options, sparsity, pattern, fragment):
    with pytest.raises(PrunelabError, match=fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        api.check_prune_args("owl", sparsity, pattern, None, options)


def test_owl_refuses_a_block_sparsity_leaving_the_range_after_the_shift():
    # Nominally [S - λ, S + λ] fits, but the shift to an exact mean can push one block out:
    # the plan refuses it before any weight changes.
    model = tiny_model("gemma3")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(PrunelabError, match=r"gives block \d sparsity"):
        prune_blocks(model, make_method("owl", {"lam": 0.49, "m": 2}), 0.5, None, _windows(),
                     progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# --- Wanda's variant and the random baseline ---------------------------------------------

def _given_alpha(alpha, scores):
    """locuslab/wanda's return_given_alpha: per row, threshold at the last sorted score whose
    running sum is within α · the row's sum (here without ties, so `<=` is exact)."""
    sorted_scores, _ = torch.sort(scores, dim=-1, stable=True)
    cumulative = torch.cumsum(sorted_scores.double(), dim=1)
    within = cumulative <= (scores.double().sum(dim=1) * alpha).reshape(-1, 1)
    index = (within.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    threshold = torch.gather(sorted_scores, 1, index)
    return (scores <= threshold) & within.any(dim=1, keepdim=True)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_variant_meets_the_target_and_follows_the_cumulative_rule(sparsity):
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(48, 200, generator=gen)
    x_sq = torch.rand(200, generator=gen) * 5
    scores = weight.abs() * x_sq.sqrt()
    pruned, alpha = variant_mask(scores, sparsity)
    assert abs(pruned.float().mean().item() - sparsity) <= 0.001
    assert torch.equal(pruned, _given_alpha(alpha, scores))
    rows = pruned.float().mean(dim=1)
    assert rows.max() - rows.min() > 0.05  # rows differ: a per-row rule, one α per layer
    decision = make_method("wanda-variant").prune_layer(
        weight.clone(), LayerStats(1, input_sq_sum=x_sq), LayerTarget("x", sparsity, None))
    assert torch.equal(decision.pruned, pruned) and decision.notes["alpha"] == alpha


def test_random_baseline_is_seeded_exact_and_differs_by_seed():
    def masks(seed):
        model = tiny_model("llama")
        prune_blocks(model, make_method("random", {"mask_seed": seed}), 0.5, None, None,
                     progress=False)
        return [arch.weight_matrix(m) == 0 for m in arch.named_prunable_layers(model).values()]

    first, again, other = masks(1), masks(1), masks(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert all((m.sum(dim=1) == m.shape[1] // 2).all() for m in first)
    assert not make_method("random").needs_calibration


# --- per-layer sparsity maps ---------------------------------------------------------------

def _write_map(entries, suffix=".json"):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / f"map{suffix}"
    path.write_text(json.dumps(entries) if suffix == ".json" else
                    "\n".join(f"{k}: {v}" for k, v in entries.items()))
    return path


def test_sparsity_map_sets_blocks_and_layers_and_checks_the_mean():
    model = tiny_model("llama")
    names = list(arch.named_prunable_layers(model))
    q0 = names[0]  # model.layers.0.self_attn.q_proj, overriding block 0's entry
    sizes = {n: arch.weight_matrix(m).numel() for n, m in arch.named_prunable_layers(model).items()}
    block0 = [n for n in names if ".0." in n]
    total = sum(sizes.values())
    # Choose block 1's value so that the weighted mean is exactly 0.5.
    mass0 = 0.25 * sizes[q0] + 0.4 * sum(sizes[n] for n in block0 if n != q0)
    rest = total - sum(sizes[n] for n in block0)
    value1 = (0.5 * total - mass0) / rest
    path = _write_map({0: 0.4, q0: 0.25, "1": value1}, suffix=".yaml")
    records = prune_blocks(model, make_method("sparsity-map", {"file": str(path)}), 0.5, None,
                           _windows(), progress=False)
    for r in records:
        expected = 0.25 if r.name == q0 else 0.4 if r.name in block0 else value1
        assert r.target_sparsity == pytest.approx(expected)
        assert r.zeros_after == r.rows * int(r.cols * expected)


@pytest.mark.parametrize("entries,fragment", [
    ({"model.layers.0.mlp.nope": 0.5}, "does not have"),
    ({"7": 0.5}, "does not have"),
    ({"0": 0.9}, "averages"),
])
def test_sparsity_map_refuses_unknown_layers_and_a_wrong_mean(entries, fragment):
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    method = make_method("sparsity-map", {"file": str(_write_map(entries))})
    with pytest.raises(PrunelabError, match=fragment):
        engine.check_method_fit(model, method, 0.5, None)
    with pytest.raises(PrunelabError, match=fragment):
        prune_blocks(model, method, 0.5, None, _windows(), progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"), ("[1, 2]", "not a non-empty map"),
    ('{"0": 1.5}', "not a sparsity"), ("{: :", "cannot be read"),
])
def test_sparsity_map_file_is_checked_when_the_method_is_made(tmp_path, content, fragment):
    path = tmp_path / "map.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PrunelabError, match=fragment):
        api.check_prune_args("sparsity-map", 0.5, None, None, {"file": str(path)})
    with pytest.raises(PrunelabError, match="needs a map"):
        make_method("sparsity-map")


# --- GBLM -----------------------------------------------------------------------------------

def test_gblm_scores_and_masks_equal_a_transcription_of_the_reference():
    windows = _windows(n=4, length=16)
    model, reference = tiny_model("llama"), tiny_model("llama")
    prune_blocks(model, make_method("gblm"), 0.5, None, windows, batch_size=2, progress=False)

    # VILA-Lab/GBLM-Pruner: per window, backward of the LM loss (labels = inputs) on the dense
    # model, accumulating (100·g)² in fp32; G = sqrt. Activation term: running mean over
    # windows of Σ_tokens x² (block 0 sees the same inputs whether or not it is sequential).
    layers = {n: m for n, m in arch.named_prunable_layers(reference).items() if ".0." in n}
    grads = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    for window in windows:
        reference.zero_grad()
        reference(input_ids=window[None], labels=window[None], use_cache=False).loss.backward()
        for n, m in layers.items():
            grads[n] += (m.weight.grad * 100) ** 2
    inputs = dense_layer_inputs(reference, windows)
    for n, m in layers.items():
        W = m.weight.detach()
        scaler_row = inputs[n].pow(2).sum(0) / len(windows)
        score = W.abs() * scaler_row.sqrt()[None, :] + W.abs() * grads[n].sqrt()
        order = torch.sort(score, dim=-1, stable=True).indices[:, : W.shape[1] // 2]
        expected = torch.zeros_like(W, dtype=torch.bool).scatter_(1, order, True)
        got = arch.weight_matrix(model.get_submodule(n)) == 0
        assert torch.equal(got, expected), n


def test_gradients_with_too_little_memory_are_refused_first(monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(engine, "_available_bytes", lambda device: 1000)
    with pytest.raises(PrunelabError, match="one backward pass"):
        prune_blocks(model, make_method("gblm"), 0.5, None, _windows(), progress=False)
    monkeypatch.undo()
    assert engine.backward_bytes(model, 24) > 4 * sum(
        arch.weight_matrix(m).numel() for m in arch.named_prunable_layers(model).values())


def test_an_out_of_memory_backward_is_one_user_error(monkeypatch):
    model = tiny_model("llama")

    def explode(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not "
                           "enough memory: you tried to allocate 123 bytes.")

    monkeypatch.setattr(model.model, "forward", explode)
    with pytest.raises(PrunelabError, match="out of memory in the backward pass"):
        engine.gather_gradients(model, _windows(2), ["grad_sq_sum"])
    assert all(p.grad is None for p in model.parameters())


# --- DSnoT ----------------------------------------------------------------------------------

def _dsnot_reference_row(D, grow_metric, wanda, pruned, cycles, threshold):
    """zyxxmu/DSnoT's unstructured loop for one row, written plainly (its default: no sign
    check). Grow candidates: all positions sorted by D/var (kept ones at 0), taken from the end
    while err > 0, from the start otherwise; prune candidates: kept weights by Wanda score,
    negatives ascending then positives descending, from the start while err ≥ 0."""
    pruned = pruned.clone()
    cols = D.shape[0]
    grow_order = torch.sort(torch.where(pruned, grow_metric, 0.0), stable=True).indices.tolist()
    kept = torch.sort(torch.where(pruned, float("inf"), wanda), stable=True).indices.tolist()
    kept = kept[: int((~pruned).sum())]
    negatives = [j for j in kept if D[j] < 0]
    positives = [j for j in kept if D[j] > 0]
    prune_order = negatives + positives[::-1]
    err = float(D[pruned].sum())
    grow_low, grow_high, prune_low, prune_high = 0, cols - 1, 0, len(prune_order) - 1
    active = True
    for _ in range(cycles):
        if err > 0:
            grow, grow_high = grow_order[grow_high], grow_high - 1
        else:
            grow, grow_low = grow_order[grow_low], grow_low + 1
        if err < 0:
            cut, prune_high = prune_order[prune_high], prune_high - 1
        else:
            cut, prune_low = prune_order[prune_low], prune_low + 1
        active = active and abs(err) > threshold
        if not active:
            break
        pruned[cut], pruned[grow] = True, False
        err += float(D[cut] - D[grow])
    return pruned


def test_dsnot_equals_the_reference_loop_and_keeps_the_sparsity():
    gen = torch.Generator().manual_seed(7)
    rows, cols = 12, 256
    weight = torch.randn(rows, cols, generator=gen)
    x = torch.randn(500, cols, generator=gen) * torch.rand(cols, generator=gen) \
        + torch.randn(cols, generator=gen)
    mean, var, sq = x.mean(0), x.var(0), x.pow(2).sum(0)
    scores = weight.abs() * sq.sqrt()
    pruned = torch.zeros_like(weight, dtype=torch.bool).scatter_(
        1, torch.sort(scores, dim=1, stable=True).indices[:, : cols // 2], True)
    refined = dsnot_refine(weight, pruned, mean, var, sq, max_cycles=12, update_threshold=0.5)
    D = weight * mean
    for row in range(rows):
        expected = _dsnot_reference_row(D[row], D[row] / var, scores[row], pruned[row], 12, 0.5)
        assert torch.equal(refined[row], expected), row
    assert (refined.sum(dim=1) == cols // 2).all()
    assert (refined != pruned).any()
    # Where a row swapped, its expected error shrank.
    before, after = (D * pruned).sum(1).abs(), (D * refined).sum(1).abs()
    assert (after <= before + 1e-5).all() and (after < before).any()


def test_dsnot_after_any_method_keeps_sparsity_patterns_and_skips_the_mlp():
    windows = _windows()
    plain, refined = tiny_model("llama"), tiny_model("llama")
    prune_blocks(plain, make_method("sparsegpt"), 0.5, None, windows, progress=False)
    records = prune_blocks(refined, make_method("dsnot", {"base": "sparsegpt"}), 0.5, None,
                           windows, progress=False)
    for r in records:
        a = arch.weight_matrix(plain.get_submodule(r.name))
        b = arch.weight_matrix(refined.get_submodule(r.name))
        assert r.zeros_after == int((a == 0).sum()) == int((b == 0).sum()), r  # swaps keep count
        if ".mlp." in r.name:
            assert "dsnot_swaps" not in r.notes
    swapped = [r for r in records if r.notes.get("dsnot_swaps")]
    assert swapped and all(".self_attn." in r.name for r in swapped)
    nm = tiny_model("llama")
    prune_blocks(nm, make_method("dsnot", {"skip": ""}), 0.5, NMPattern(2, 4), windows,
                 progress=False)
    for m in arch.named_prunable_layers(nm).values():
        assert ((arch.weight_matrix(m) != 0).reshape(m.weight.shape[0], -1, 4).sum(-1)
                == 2).all()


# --- BESA -----------------------------------------------------------------------------------

def test_besa_masks_are_straight_through_and_the_final_count_is_exact():
    gen = torch.Generator().manual_seed(1)
    weight, sq = torch.randn(6, 40, generator=gen), torch.rand(40, generator=gen)
    allocation = _LayerAllocation(weight, sq, torch.arange(0, 101) / 100, per_row=True)
    with torch.no_grad():
        allocation.logits[2, 80:] += 3.0  # row 2 prefers high sparsities
    keep, sparsity = allocation.mask(smooth=False)
    row_sparsity = allocation.row_sparsity(allocation.probabilities(False)).detach()
    order = torch.sort(weight.abs() * sq.sqrt(), dim=1, stable=True).indices
    for row in range(6):
        k = int(row_sparsity[row] * 40)
        assert torch.equal(keep[row].detach()[order[row]] == 0, torch.arange(40) < k)
    p = allocation.probabilities(False).detach()
    pruned_at = (torch.arange(40)[None, :] < (torch.arange(0, 101) / 100 * 40).long()[:, None])
    soft_by_rank = 1 - p @ pruned_at.float()  # P(kept) at each rank, as the reference's matmul
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(40).expand(6, 40).contiguous())
    torch.testing.assert_close(allocation.keep_probability(p), soft_by_rank.gather(1, rank))
    (keep * torch.randn(6, 40, generator=gen)).sum().backward()
    assert allocation.logits.grad.abs().sum() > 0  # the soft mask's gradient flows through
    counts = exact_counts(torch.tensor([0.2, 0.5, 0.9]), torch.tensor([10, 10, 20]), 20)
    assert int(counts.sum()) == 20 and counts[2] > counts[1] > counts[0]


def test_besa_learns_an_allocation_and_meets_the_target_exactly():
    model = tiny_model("llama")
    method = make_method("besa", {"lr": 0.2, "epochs": 3})
    records = prune_blocks(model, method, 0.6, None, _windows(n=8), batch_size=4,
                           progress=False)
    for block in ("0", "1"):
        rs = [r for r in records if r.name.split(".")[2] == block]
        assert sum(r.zeros_after for r in rs) == sum(r.rows * int(r.cols * 0.6) for r in rs)
        assert len({r.zeros_after / r.numel for r in rs}) > 1  # layers got different shares
    learned = [r.notes["besa_learned_sparsity"] for r in records]
    assert sum(learned) / len(learned) > 0.52  # the penalty pulled it from 0.5 towards 0.6
    for name, p in model.named_parameters():
        assert not name.endswith("original"), name  # no parametrization left behind
    assert all(p.requires_grad for p in model.parameters())


def test_besa_target_outside_its_candidates_is_refused_before_the_model():
    with pytest.raises(PrunelabError, match=r"outside its candidate sparsities \[0.0, 0.6\]"):
        api.check_prune_args("besa", 0.7, None, None, {"max_rate": "0.6"})
    with pytest.raises(PrunelabError, match="does not support N:M"):
        api.check_prune_args("besa", None, "2:4")
    with pytest.raises(PrunelabError, match="min_rate < max_rate"):
        make_method("besa", {"min_rate": 0.5, "max_rate": 0.4})


# --- every method from the API and the registry --------------------------------------------

@pytest.mark.parametrize("method,options", [
    ("owl", {"base": "magnitude"}), ("gblm", {}), ("dsnot", {}), ("besa", {"epochs": 1}),
    ("wanda-variant", {}), ("random", {"mask_seed": 3})])
def test_new_methods_run_through_the_api(method, options):
    from prunelab.testing import tiny_loaded

    loaded = tiny_loaded("llama")
    import tempfile
    from pathlib import Path

    text = Path(tempfile.mkdtemp()) / "calib.txt"
    text.write_text("Pruning removes weights from a network. " * 200)
    from prunelab.data.corpora import CalibrationConfig

    result = api.prune(loaded, method, 0.5, calibration=CalibrationConfig(str(text), 4, 32, 0),
                       progress=False, **options)
    assert abs(result.overall_sparsity - 0.5) < 0.02
    assert result.method == method


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt"])
def test_block_inputs_run_any_slice_of_a_batch_as_the_whole_batch_would(family):
    from prunelab.engine import BlockInputs, BlockRunner

    model = tiny_model(family)
    model.config.use_cache = False
    blocks = arch.find_blocks(model).blocks
    runner = BlockRunner(model, blocks, _windows(n=5), batch_size=3, device="cpu")
    inputs = BlockInputs(runner, 0)
    assert len(inputs) == 2 and inputs.batch_size(0) == 3 and inputs.batch_size(1) == 2
    with torch.no_grad():
        whole = inputs.forward(blocks[0], 0)
        for start in range(3):
            part = inputs.forward(blocks[0], 0, slice(start, start + 1))
            torch.testing.assert_close(part, whole[start:start + 1], atol=1e-5, rtol=1e-5)
