"""The engine prunes every supported architecture, with every method, to the requested sparsity."""

import pytest
import torch

from prunelab import arch
from prunelab.engine import _collect, _input_groups, BlockRunner, prune_blocks
from prunelab.errors import PrunelabError
from prunelab.methods.base import Statistic, make_method
from prunelab.methods.masks import NMPattern
from prunelab.testing import TINY_CONFIGS, tiny_model

FAMILIES = sorted(TINY_CONFIGS)
METHODS = ["magnitude", "wanda", "sparsegpt"]


def _windows(n=5, length=20):
    return torch.randint(4, 260, (n, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_unstructured_sparsity_within_one_weight_per_row(family, method):
    model = tiny_model(family)
    n_layers = sum(len(arch.prunable_layers(b)) for b in arch.find_blocks(model).blocks)
    embeddings = model.get_input_embeddings().weight.clone()
    records = prune_blocks(model, make_method(method), 0.6, None, _windows(), batch_size=2,
                           progress=False)
    assert len(records) == n_layers
    for r in records:
        assert abs(r.zeros_after - 0.6 * r.numel) <= r.rows, r
    # Embeddings and the head are left alone.
    assert torch.equal(model.get_input_embeddings().weight, embeddings)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_nm_pattern_holds_in_every_group(family, method):
    model = tiny_model(family)
    prune_blocks(model, make_method(method), 0.5, NMPattern(2, 4), _windows(), batch_size=3,
                 progress=False)
    for block in arch.find_blocks(model).blocks:
        for name, layer in arch.prunable_layers(block).items():
            W = arch.weight_matrix(layer)
            nonzero = (W != 0).view(W.shape[0], -1, 4).sum(-1)
            assert (nonzero <= 2).all(), name


def test_pruned_model_still_runs_and_changes_output():
    model = tiny_model("gemma3")
    x = _windows(1)
    before = model(input_ids=x).logits
    prune_blocks(model, make_method("wanda"), 0.5, None, _windows(), progress=False)
    after = model(input_ids=x).logits
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


def test_batching_does_not_change_the_result():
    a, b = tiny_model("llama"), tiny_model("llama")
    prune_blocks(a, make_method("sparsegpt"), 0.5, None, _windows(6), batch_size=1, progress=False)
    prune_blocks(b, make_method("sparsegpt"), 0.5, None, _windows(6), batch_size=4, progress=False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, atol=1e-4), n


def test_true_sequential_groups_are_found_from_shared_inputs():
    model = tiny_model("llama")
    found = arch.find_blocks(model)
    runner = BlockRunner(model, found.blocks, _windows(2), 2, torch.device("cpu"))
    groups = _input_groups(runner, 0, arch.prunable_layers(found.blocks[0]))
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                      ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("statistic", [Statistic.HESSIAN, Statistic.INPUT_SQ_SUM])
def test_statistics_are_exact_and_shared_by_layers_reading_one_tensor(family, statistic):
    model = tiny_model(family)
    found = arch.find_blocks(model)
    layers = arch.prunable_layers(found.blocks[1])
    runner = BlockRunner(model, found.blocks, _windows(5), 2, torch.device("cpu"))
    runner.run(0, advance=True)
    seen: dict[str, list] = {name: [] for name in layers}
    handles = [m.register_forward_hook(
        lambda mod, args, out, name=name: seen[name].append(args[0].reshape(-1, args[0].shape[-1])))
        for name, m in layers.items()]
    runner.run(1, advance=False)
    for h in handles:
        h.remove()
    stats = _collect(runner, 1, layers, statistic, torch.device("cpu"))
    for name, chunks in seen.items():
        x = torch.cat(chunks)
        assert stats[name].n_tokens == x.shape[0] == 5 * 20
        if statistic is Statistic.HESSIAN:
            torch.testing.assert_close(stats[name].hessian, 2 * x.t() @ x / x.shape[0])
        else:
            torch.testing.assert_close(stats[name].input_sq_sum, (x * x).sum(0))
    groups = _input_groups(runner, 1, layers)
    for group in groups:  # one tensor per group of layers reading the same input
        assert all(stats[name] is stats[group[0]] for name in group)
    assert len({id(s) for s in stats.values()}) == len(groups)
    if family != "gpt2":  # (GPT-2 fuses q/k/v into one matrix: nothing to share)
        assert len(groups) < len(layers)


def test_true_sequential_sparsegpt_differs_from_all_at_once():
    a, b = tiny_model("llama"), tiny_model("llama")
    prune_blocks(a, make_method("sparsegpt"), 0.5, None, _windows(), progress=False)
    prune_blocks(b, make_method("sparsegpt", {"true_sequential": True}), 0.5, None, _windows(),
                 progress=False)
    down_a = a.model.layers[0].mlp.down_proj.weight
    down_b = b.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(down_a, down_b)


def test_model_without_blocks_is_a_user_error():
    with pytest.raises(PrunelabError, match="no repeated blocks"):
        arch.find_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_pattern_width_checked_before_any_pruning():
    model = tiny_model("llama")
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(PrunelabError, match="does not divide"):
        prune_blocks(model, make_method("wanda"), 1 - 2 / 3, NMPattern(2, 3), _windows(),
                     progress=False)
    assert torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)


def _flat_tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flat_tensors(o)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in _flat_tensors(obj[k])]
    return []


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_block_arguments_equal_those_of_a_real_forward(family):
    model = tiny_model(family)
    blocks = arch.find_blocks(model).blocks
    real, real_first = [], []

    def record(module, args, kwargs):
        real_first.append(arch.block_hidden(args, kwargs))
        real.append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))

    handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks]
    ids = _windows(2)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    first, calls = arch.capture_block_calls(model, blocks, ids, stop_after_first=False)
    assert len(calls) == len(blocks)
    assert torch.equal(first, real_first[0])
    for (args, kwargs), (real_args, real_kwargs) in zip(calls, real):
        ours, theirs = _flat_tensors((args[1:], kwargs)), _flat_tensors((real_args, real_kwargs))
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert all("forward" not in vars(b) for b in blocks)  # the stand-ins are gone


@pytest.mark.parametrize("family", FAMILIES)
def test_block_runner_advances_to_the_real_inputs_of_every_block(family):
    model = tiny_model(family)
    blocks = arch.find_blocks(model).blocks
    real = []
    handles = [b.register_forward_pre_hook(
        lambda m, args, kwargs: real.append(arch.block_hidden(args, kwargs).clone()),
        with_kwargs=True) for b in blocks]
    ids = _windows(5)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    runner = BlockRunner(model, blocks, ids, batch_size=2, device="cpu")  # batches 2, 2, 1
    # one buffer holds every batch's input (long-lived tensors kept out of the heap's way)
    assert len({t.untyped_storage().data_ptr() for t in runner.inputs}) == 1
    for index in range(len(blocks)):
        torch.testing.assert_close(torch.cat(runner.inputs), real[index], atol=1e-5, rtol=1e-5)
        runner.run(index, advance=True)
