"""The engine prunes every supported architecture, with every method, to the requested sparsity."""

import pytest
import torch

from prunelab import arch
from prunelab.engine import _collect, _input_groups, BlockRunner, prune_blocks
from prunelab.errors import PrunelabError
from prunelab.methods.base import make_method
from prunelab.methods.masks import NMPattern
from prunelab.testing import TINY_CONFIGS, dense_layer_inputs, tiny_model

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
    groups, once = _input_groups(runner, 0, arch.prunable_layers(found.blocks[0]))
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                      ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert once  # every layer runs once per forward: a group's statistics may stop early


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_a_group_stops_its_forward_once_read_with_the_same_statistics(family):
    """Statistics of a sequential group end the block's forward after its last layer has run;
    they are bit for bit those of the whole forward, and later layers never run."""
    model = tiny_model(family)
    found = arch.find_blocks(model)
    layers = arch.prunable_layers(found.blocks[0])
    runner = BlockRunner(model, found.blocks, _windows(5), 2, torch.device("cpu"))
    groups, once = _input_groups(runner, 0, layers)
    assert once and len(groups) > 1
    calls = {name: 0 for name in layers}
    handles = [m.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
               for name, m in layers.items()]
    try:
        for group in groups:
            watched = {n: layers[n] for n in group}
            calls.update(dict.fromkeys(calls, 0))
            early = _collect(runner, 0, watched, ("hessian", "input_sq_sum"), torch.device("cpu"),
                             stop_early=True)
            ran = {n for n, count in calls.items() if count}
            whole = _collect(runner, 0, watched, ("hessian", "input_sq_sum"), torch.device("cpu"))
            for name in group:
                assert early[name].n_tokens == whole[name].n_tokens
                assert torch.equal(early[name]["hessian"], whole[name]["hessian"])
                assert torch.equal(early[name]["input_sq_sum"], whole[name]["input_sq_sum"])
            later = [n for n in layers if list(layers).index(n) > max(map(list(layers).index, group))]
            assert not ran & set(later), (group, ran)
    finally:
        for h in handles:
            h.remove()


def test_a_whole_block_stops_before_its_last_projection_once_its_kind_is_known():
    """The first block's statistics learn that every layer runs once; the later blocks'
    statistics passes then stop before the down projection, and the pruned weights are
    those of whole passes."""
    stopped, whole = tiny_model(), tiny_model()
    blocks = arch.find_blocks(stopped).blocks
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.mlp.down_proj.register_forward_hook(
            lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    windows = _windows(6)
    prune_blocks(stopped, make_method("wanda"), 0.5, None, windows, batch_size=3,
                 progress=False)
    batches = 2
    # after block 0 (which ran whole to learn its kind), a block's down projection runs only
    # in the pass that feeds the next block: the last block's never runs
    assert calls[1:] == [batches] * (len(blocks) - 2) + [0]
    with pytest.MonkeyPatch.context() as patch:
        import prunelab.engine as engine

        real = engine._collect
        patch.setattr(engine, "_collect",
                      lambda *a, **k: real(*a, **{**k, "stop_early": False}))
        prune_blocks(whole, make_method("wanda"), 0.5, None, windows, batch_size=3,
                     progress=False)
    for (name, a), b in zip(stopped.named_parameters(), whole.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_statistics_are_exact_and_shared_by_layers_reading_one_tensor(family):
    model = tiny_model(family)
    found = arch.find_blocks(model)
    layers = arch.prunable_layers(found.blocks[1])
    runner = BlockRunner(model, found.blocks, _windows(5), 2, torch.device("cpu"))
    runner.run(0, advance=True)
    seen: dict[str, list] = {name: [] for name in layers}
    outputs: dict[str, list] = {name: [] for name in layers}

    def record(mod, args, out, name):
        seen[name].append(args[0].reshape(-1, args[0].shape[-1]))
        outputs[name].append(out.reshape(-1, out.shape[-1]))

    handles = [m.register_forward_hook(lambda mod, a, o, name=name: record(mod, a, o, name))
               for name, m in layers.items()]
    runner.run(1, advance=False)
    for h in handles:
        h.remove()
    names = ("hessian", "input_sq_sum", "input_mean_var", "output_sq_sum")
    stats = _collect(runner, 1, layers, names, torch.device("cpu"))
    for name, chunks in seen.items():
        x, y = torch.cat(chunks), torch.cat(outputs[name])
        assert stats[name].n_tokens == x.shape[0] == 5 * 20
        assert set(stats[name]) == set(names)
        torch.testing.assert_close(stats[name]["hessian"], 2 * x.t() @ x / x.shape[0])
        torch.testing.assert_close(stats[name]["input_sq_sum"], (x * x).sum(0))
        torch.testing.assert_close(stats[name]["input_mean_var"].mean, x.mean(0))
        torch.testing.assert_close(stats[name]["input_mean_var"].var, x.var(0),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats[name]["output_sq_sum"], (y * y).sum(0))
    groups, _ = _input_groups(runner, 1, layers)
    for group in groups:  # one tensor per group of layers reading the same input
        for statistic in ("hessian", "input_sq_sum"):
            assert all(stats[n][statistic] is stats[group[0]][statistic] for n in group)
    assert len({id(s["hessian"]) for s in stats.values()}) == len(groups)
    assert len({id(s["output_sq_sum"]) for s in stats.values()}) == len(layers)
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


# --- the method hooks: planning, whole-block steps, masks, decisions without a mask ---------

from torch import nn  # noqa: E402

from prunelab.engine import gather_gradients  # noqa: E402
from prunelab.methods.base import (LayerDecision, LayerTarget, NoOptions,  # noqa: E402
                                   PruningMethod)
from prunelab.methods.sparsegpt import sparsegpt_prune  # noqa: E402
from prunelab.methods.wanda import Wanda  # noqa: E402


class _PlannedWanda(Wanda):
    """Wanda with per-layer sparsities from a plan over the dense model's statistics."""

    planning_statistics = ("input_sq_sum",)

    def plan(self, context):
        self.seen = context
        return {name: (0.25 if "self_attn" in name else LayerTarget(name, 0.75, None))
                for name in context.weights}


def test_plan_sees_dense_statistics_and_sets_per_layer_targets():
    model, windows = tiny_model("llama"), _windows()
    dense_inputs = dense_layer_inputs(tiny_model("llama"), windows)
    method = _PlannedWanda(NoOptions())
    records = prune_blocks(model, method, 0.5, None, windows, batch_size=2, progress=False)
    context = method.seen
    assert context.sparsity == 0.5 and context.pattern is None
    assert set(context.statistics) == set(context.weights) == set(dense_inputs)
    for name, x in dense_inputs.items():  # later blocks too: the planning pass prunes nothing
        assert context.statistics[name].n_tokens == x.shape[0]
        torch.testing.assert_close(context.statistics[name]["input_sq_sum"], (x * x).sum(0),
                                   rtol=1e-4, atol=1e-5)
    for r in records:
        expected = 0.25 if "self_attn" in r.name else 0.75
        assert r.target_sparsity == expected
        assert r.zeros_after == r.rows * int(r.cols * expected), r


def test_plan_can_ask_for_weight_gradients():
    class _Gradients(PruningMethod):
        name, summary = "toy-gradients", "records what plan sees"
        planning_statistics = ("grad_sq_sum", "input_sq_sum")

        def plan(self, context):
            self.seen = context.statistics

        def prune_layer(self, weight, stats, target):
            return LayerDecision(weight, torch.zeros_like(weight, dtype=torch.bool))

    model, windows = tiny_model("gpt2"), _windows(3)
    method = _Gradients(NoOptions())
    assert method.needs_calibration
    prune_blocks(model, method, 0.5, None, windows, progress=False)
    expected = gather_gradients(model, windows, ["grad_sq_sum"])
    for name, stats in method.seen.items():
        assert set(stats) == {"grad_sq_sum", "input_sq_sum"}
        assert torch.equal(stats["grad_sq_sum"], expected[name]["grad_sq_sum"])
        assert stats["grad_sq_sum"].shape == arch.weight_matrix(
            model.get_submodule(name)).shape  # GPT-2's transposed Conv1D as [out, in]


def test_misdeclared_statistics_and_plans_are_refused_before_any_work():
    model = tiny_model("llama")
    before = model.model.layers[0].self_attn.q_proj.weight.clone()

    class _GradInBlock(Wanda):
        statistics = ("grad_sq_sum",)

    class _BadPlan(Wanda):
        def plan(self, context):
            return {"model.layers.0.nope": 0.5}

    class _TooSparse(Wanda):
        def plan(self, context):
            return dict.fromkeys(context.weights, 1.5)

    with pytest.raises(ValueError, match="planning_statistics"):
        prune_blocks(model, _GradInBlock(NoOptions()), 0.5, None, _windows(), progress=False)
    with pytest.raises(ValueError, match="no statistic"):
        prune_blocks(model, type("_Unknown", (Wanda,), {"statistics": ("nope",)})(NoOptions()),
                     0.5, None, _windows(), progress=False)
    with pytest.raises(ValueError, match="not a prunable layer"):
        prune_blocks(model, _BadPlan(NoOptions()), 0.5, None, _windows(), progress=False)
    with pytest.raises(PrunelabError, match="planned sparsity"):
        prune_blocks(model, _TooSparse(NoOptions()), 0.5, None, _windows(), progress=False)
    with pytest.raises(PrunelabError, match="needs calibration"):
        prune_blocks(model, make_method("wanda"), 0.5, None, None, progress=False)
    assert torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)


class _HalveMLP(PruningMethod):
    """Structured surgery: keep every other intermediate channel of the MLP."""

    name, summary = "toy-halve-mlp", "removes half the MLP's channels"
    statistics = ("input_sq_sum",)  # so that the pruned blocks must run to feed the next

    def sequential_groups(self):
        return True  # the down projection's group comes after its module was replaced

    def prune_block(self, block, layers, stats, targets):
        if "mlp.gate_proj" not in layers:
            return {}
        mlp = block.mlp
        keep = torch.arange(0, mlp.gate_proj.out_features, 2)
        for attr in ("gate_proj", "up_proj"):
            old = getattr(mlp, attr)
            new = nn.Linear(old.in_features, len(keep), bias=old.bias is not None)
            new.weight.data = old.weight.data[keep].clone()
            setattr(mlp, attr, new)
        old = mlp.down_proj
        new = nn.Linear(len(keep), old.out_features, bias=old.bias is not None)
        new.weight.data = old.weight.data[:, keep].clone()
        mlp.down_proj = new
        return {}


def test_a_block_step_may_change_shapes():
    model, reference = tiny_model("llama"), tiny_model("llama")
    records = prune_blocks(model, _HalveMLP(NoOptions()), 0.5, None, _windows(), batch_size=2,
                           progress=False)
    shapes = {r.name.split(".", 3)[-1]: (r.rows, r.cols) for r in records}
    assert shapes["mlp.gate_proj"] == shapes["mlp.up_proj"] == (64, 64)
    assert shapes["mlp.down_proj"] == (64, 64)
    assert shapes["self_attn.q_proj"] == (64, 64)
    assert all(r.notes.get("shape_before") == [128, 64] for r in records
               if r.name.endswith("gate_proj"))
    # Removing a channel is the same as zeroing its column of the down projection.
    for block in reference.model.layers:
        block.mlp.down_proj.weight.data[:, 1::2] = 0
    x = _windows(2)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, reference(input_ids=x).logits,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,pattern", [("wanda", None), ("sparsegpt", NMPattern(2, 4)),
                                            ("magnitude", None)])
def test_masks_are_kept_on_request(method, pattern):
    model = tiny_model("qwen2")
    records = prune_blocks(model, make_method(method), 0.5, pattern, _windows(), progress=False,
                           keep_masks=True)
    assert set(records.masks) == {r.name for r in records}
    for name, mask in records.masks.items():
        weight = arch.weight_matrix(model.get_submodule(name))
        assert mask.dtype == torch.bool and mask.device.type == "cpu"
        assert torch.equal(mask, weight == 0)
    assert prune_blocks(tiny_model("qwen2"), make_method(method), 0.5, pattern, _windows(),
                        progress=False).masks == {}


class _RoundToTenth(PruningMethod):
    """A quantizer stand-in: weights rounded to one decimal, no mask."""

    name, summary = "toy-round", "rounds every weight to one decimal"
    supports_nm = False

    def prune_layer(self, weight, stats, target):
        return LayerDecision(torch.round(weight * 10) / 10, None, {"grid": 0.1})


def test_a_decision_without_a_mask_writes_the_weights_as_given():
    model, dense = tiny_model("opt"), tiny_model("opt")
    records = prune_blocks(model, _RoundToTenth(NoOptions()), 0.0, None, None, progress=False,
                           keep_masks=True)
    assert records.masks == {}
    for r in records:
        before = arch.weight_matrix(dense.get_submodule(r.name))
        after = arch.weight_matrix(model.get_submodule(r.name))
        assert torch.equal(after, torch.round(before * 10) / 10)
        assert r.zeros_after == int((after == 0).sum()) > 0 and r.notes == {"grid": 0.1}


def test_a_decision_of_the_wrong_shape_is_refused():
    class _Wrong(PruningMethod):
        name, summary = "toy-wrong", "returns a row instead of a matrix"

        def prune_layer(self, weight, stats, target):
            return LayerDecision(weight[:1], None)

    with pytest.raises(RuntimeError, match="shape"):
        prune_blocks(tiny_model("llama"), _Wrong(NoOptions()), 0.5, None, None, progress=False)


@pytest.mark.parametrize("family,pattern", [("llama", None), ("gpt2", NMPattern(2, 4)),
                                            ("gemma3", None)])
def test_sparsegpt_through_the_engine_equals_a_plain_driver_exactly(family, pattern):
    """Pins the engine's plumbing (batching, shared statistics, writing) bit for bit: a plain
    driver accumulates each layer's Hessian on its own and calls sparsegpt_prune."""
    windows = _windows(5)
    ours, plain = tiny_model(family), tiny_model(family)
    prune_blocks(ours, make_method("sparsegpt"), 0.5, pattern, windows, batch_size=2,
                 progress=False)
    found = arch.find_blocks(plain)
    runner = BlockRunner(plain, found.blocks, windows, 2, torch.device("cpu"))
    for index, block in enumerate(found.blocks):
        layers = arch.prunable_layers(block)
        inputs = {n: [] for n in layers}
        handles = [m.register_forward_hook(lambda mod, a, o, n=n: inputs[n].append(a[0]))
                   for n, m in layers.items()]
        runner.run(index, advance=False)
        for h in handles:
            h.remove()
        for name, layer in layers.items():
            xs = [x.reshape(-1, x.shape[-1]).float() for x in inputs[name]]
            H = torch.zeros(xs[0].shape[1], xs[0].shape[1])
            for x in xs:
                H.addmm_(x.t(), x)
            H.mul_(2.0 / sum(x.shape[0] for x in xs))
            W = arch.weight_matrix(layer).float().contiguous().clone()  # GPT-2: transposed
            new, pruned, _ = sparsegpt_prune(W, H, 0.5, pattern)
            new[pruned] = 0
            arch.set_weight_matrix(layer, new)
        runner.run(index, advance=True)
    for (name, a), (_, b) in zip(ours.named_parameters(), plain.named_parameters()):
        assert torch.equal(a, b), name
