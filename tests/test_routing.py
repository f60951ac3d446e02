"""Routing inputs to their task's pruned model (SEAP's inference step)."""

import copy

import pytest
import torch

from prunelab import arch
from prunelab.errors import PrunelabError
from prunelab.evaluate.scoring import can_pack
from prunelab.routing import (RoutedModel, build_seap_router, fit_router,
                              prompt_features, trunk_features)
from prunelab.tasks.base import Item, Task
from prunelab.tasks.registry import register
from prunelab.testing import tiny_loaded, tiny_model


def _batch(low, high, rows=3, width=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (rows, width), generator=generator)


def test_trunk_features_are_the_masked_mean_of_that_blocks_hidden_state():
    model = tiny_model("llama")
    ids = _batch(4, 250)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # a left-padded row: its padding does not count
    with torch.no_grad():
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for depth in (0, 1):
        got = trunk_features(model, ids, mask, depth)
        w = mask.unsqueeze(-1).float()
        expected = (states[depth] * w).sum(1) / w.sum(1)
        assert torch.allclose(got, expected, atol=1e-6)


def test_the_router_separates_and_is_deterministic():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=generator) + 2.0
    b = torch.randn(40, 8, generator=generator) - 2.0
    router = fit_router({"a": a, "b": b}, depth=1)
    assert router.labels == ["a", "b"]
    assert (router.predict(a) == 0).all() and (router.predict(b) == 1).all()
    again = fit_router({"a": a, "b": b}, depth=1)
    assert torch.equal(router.weight, again.weight)
    with pytest.raises(PrunelabError, match="two or more tasks"):
        fit_router({"a": a}, depth=1)
    with pytest.raises(PrunelabError, match="no routing prompts for b"):
        fit_router({"a": a, "b": b[:0]}, depth=1)


def _experts():
    """Two different models that share block 0, and a router on block 0's features that
    sends low token ids to "low" and high ones to "high"."""
    low, high = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    arch.find_blocks(high).blocks[0].load_state_dict(arch.find_blocks(low).blocks[0].state_dict())
    features = {"low": trunk_features(low, _batch(4, 60, rows=30, seed=1), None, 1),
                "high": trunk_features(low, _batch(200, 259, rows=30, seed=2), None, 1)}
    return {"low": low, "high": high}, fit_router(features, depth=1)


def test_each_row_runs_through_its_experts_model():
    experts, router = _experts()
    routed = RoutedModel(experts, router)
    assert not can_pack(routed)
    ids = torch.cat([_batch(4, 60, rows=2, seed=5), _batch(200, 259, rows=2, seed=6)])[[0, 2, 1, 3]]
    mask = torch.ones_like(ids)
    assert routed.route(ids, mask) == ["low", "high", "low", "high"]
    with torch.no_grad():
        logits = routed(input_ids=ids, attention_mask=mask).logits
        for row, label in enumerate(["low", "high", "low", "high"]):
            alone = experts[label](input_ids=ids[row:row + 1]).logits[0]
            assert torch.allclose(logits[row], alone, atol=1e-5)
    assert routed.route_counts == {"low": 4, "high": 4}  # two calls of four rows


def test_generation_is_each_experts_own_with_rows_in_order():
    experts, router = _experts()
    routed = RoutedModel(experts, router)
    ids = torch.cat([_batch(200, 259, rows=1, seed=7), _batch(4, 60, rows=1, seed=8)])
    mask = torch.ones_like(ids)
    out = routed.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4,
                          do_sample=False, pad_token_id=0)
    for row, label in enumerate(["high", "low"]):
        alone = experts[label].generate(input_ids=ids[row:row + 1], attention_mask=mask[:1],
                                        max_new_tokens=4, do_sample=False, pad_token_id=0)[0]
        assert torch.equal(out[row, :alone.shape[0]], alone)


def test_experts_that_differ_where_the_router_reads_are_refused():
    experts, router = _experts()
    arch.find_blocks(experts["high"]).blocks[0].mlp.up_proj.weight.data.add_(1.0)
    with pytest.raises(PrunelabError, match="differs from low in block 0"):
        RoutedModel(experts, router)
    with pytest.raises(PrunelabError, match="has no expert"):
        RoutedModel({"low": experts["low"]}, router)


def _family(name, make_input):
    items = [Item(id=f"{name}{i}", input=make_input(i), choices=("yes", "no"), gold=(0,))
             for i in range(40)]
    return register(Task(name=f"{name}:1", family=name, axis="style", level=1, level_rank=0,
                         kind="mc", loader=lambda: items))


def test_seap_experts_per_task_behind_a_router_evaluate_end_to_end():
    from prunelab.evaluate.runner import evaluate

    _family("routedigits", lambda i: f"{i * 7919 % 10000} + {i * 104729 % 1000} = {i}")
    _family("routewords", lambda i: "the quick brown fox jumps over the lazy dog " * (1 + i % 3))
    loaded = tiny_loaded("gemma3")  # three blocks: the first kept whole, two pruned
    dense = copy.deepcopy(loaded.model)
    routed, fitted = build_seap_router(loaded, ["routedigits", "routewords"], 0.25,
                                       eval_limit=20, n_samples=4, seqlen=32,
                                       keep_first=1, keep_last=0)
    assert fitted == {"routedigits": 1.0, "routewords": 1.0}
    experts = routed.model.experts
    for expert in experts.values():  # really smaller, the dense model untouched
        assert sum(p.numel() for p in expert.parameters()) < sum(p.numel()
                                                                 for p in dense.parameters())
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.parameters(), dense.parameters()))
    results = evaluate(routed, ["routedigits:1", "routewords:1"], limit=20, progress=False)
    assert [s["n"] for s in results.summary()] == [20, 20]
    assert set(routed.model.route_counts) <= {"routedigits", "routewords"}
    with pytest.raises(PrunelabError, match="depth 2 reads blocks SEAP prunes"):
        build_seap_router(loaded, ["routedigits", "routewords"], 0.25, eval_limit=20,
                          depth=2, keep_first=1, keep_last=0)


def test_prompt_features_match_the_trunk_on_one_prompt_at_a_time():
    loaded = tiny_loaded("llama")
    prompts = ["a short one", "a somewhat longer prompt than the first"]
    batched = prompt_features(loaded, prompts, 1, batch_size=2)
    single = torch.cat([prompt_features(loaded, [p], 1, batch_size=1) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_cli_route_bad_input_and_a_run(tiny_dir, tmp_path):
    import json

    from tests.cli_helpers import assert_user_error, run

    _family("clidigits", lambda i: f"{i * 7919 % 10000} + {i * 104729 % 1000} = {i}")
    _family("cliwords", lambda i: "the quick brown fox jumps over the lazy dog " * (1 + i % 3))
    assert_user_error(run("route", str(tiny_dir), "--families", "clidigits", "--sparsity",
                          "0.2"), "two or more task families")
    assert_user_error(run("route", str(tiny_dir), "--families", "clidigits,nosuchfamily",
                          "--sparsity", "0.2"), "nosuchfamily")
    assert_user_error(run("route", str(tiny_dir), "--families", "clidigits,cliwords",
                          "--sparsity", "1.5"), "outside [0, 1)")
    assert_user_error(run("route", str(tiny_dir), "--families", "clidigits,cliwords",
                          "--sparsity", "0.2", "--limit", "38"), "fewer than 8")
    out = tmp_path / "routed.jsonl"
    ok = run("route", str(tiny_dir), "--families", "clidigits,cliwords", "--sparsity", "0.2",
             "--limit", "20", "--samples", "4", "--seqlen", "32", "--option", "keep_first=1",
             "--option", "keep_last=0", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "evaluation rows sent home" in ok.stdout and "clidigits:1" in ok.stdout
    assert len(out.read_text().splitlines()) == 40
    assert {json.loads(line)["task"] for line in out.read_text().splitlines()} == {
        "clidigits:1", "cliwords:1"}


def test_a_router_generates_and_its_gold_answers_are_scored_apart():
    from prunelab.evaluate.scoring import generate_and_score, generate_greedy
    from prunelab.testing import tiny_tokenizer

    experts, router = _experts()
    routed, tok = RoutedModel(experts, router), tiny_tokenizer()
    prompts = [_batch(4, 60, rows=1, width=6, seed=3)[0].tolist(),
               _batch(200, 259, rows=1, width=9, seed=4)[0].tolist()]
    tokens, sums = generate_and_score(routed, tok, prompts, [[5, 6], [7]], max_new_tokens=4)
    # a router's `generate` returns token ids, no cache: the runner scores the golds apart
    assert tokens == generate_greedy(routed, tok, prompts, max_new_tokens=4)
    assert sums == [None, None]
