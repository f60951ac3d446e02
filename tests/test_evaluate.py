"""The evaluation engine on tiny random models: hand-checked log-probs, packing vs plain,
batching, generation, rolling log-likelihood, results and summaries, bad input."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate import metrics
from prunelab.evaluate.results import EvalResults, ExampleResult, by_dense_margin, margin_bins
from prunelab.evaluate.runner import evaluate
from prunelab.evaluate.scoring import (Group, generate_and_score, generate_greedy,
                                      rolling_windows, score_groups)
from prunelab.tasks.base import Item, Task
from prunelab.tasks.registry import register
from prunelab.testing import TINY_CONFIGS, tiny_loaded, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded("llama")


def hand_logprob(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one plain forward, summed by hand."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    return sum(float(logp[len(context) - 1 + i, tok]) for i, tok in enumerate(continuation))


def random_groups(n: int, seed: int = 0) -> list[Group]:
    rng = random.Random(seed)
    return [Group([rng.randrange(4, 260) for _ in range(rng.randint(1, 15))],
                  [[rng.randrange(4, 260) for _ in range(rng.randint(1, 6))]
                   for _ in range(rng.randint(2, 6))]) for _ in range(n)]


# --- log-likelihood scoring ----------------------------------------------------------------
# Every family, the state-space ones included: they cannot honour the packing mask, so they
# are scored in plain rows whatever `packing` asks (scoring.can_pack).
@pytest.mark.parametrize("family", list(TINY_CONFIGS))
def test_packed_batched_and_unbatched_scores_agree_with_hand_computation(family):
    model = tiny_model(family)
    groups = random_groups(7, seed=1)
    expected = [[hand_logprob(model, g.context, c) for c in g.continuations] for g in groups]
    for packing in (True, False):
        for batch_size in (1, 5, 64):
            got = score_groups(model, groups, batch_size=batch_size, packing=packing)
            for g_exp, g_got in zip(expected, got):
                assert g_got == pytest.approx(g_exp, abs=1e-5)


def test_sliding_window_models_fall_back_to_plain_rows():
    model = tiny_model("mistral")  # sliding window 32: long packed rows must not be packed
    group = Group(list(range(4, 30)), [list(range(30, 40)), list(range(40, 50))])
    assert group.packed_length > model.config.sliding_window
    (got,) = score_groups(model, [group], packing=True)
    assert got == pytest.approx([hand_logprob(model, group.context, c)
                                 for c in group.continuations], abs=1e-5)


def test_rolling_windows_score_every_token_once():
    tokens = list(range(10, 60))
    windows = rolling_windows(tokens, prefix_id=1, max_length=16)
    assert [t for _, cont in windows for t in cont] == tokens
    assert windows[0][0] == [1]
    for ctx, cont in windows:
        assert len(ctx) + len(cont) <= 16
        start = tokens.index(cont[0])
        assert ctx[-1] == ([1] + tokens)[start]  # conditioned on the token just before


# --- multiple choice through evaluate() --------------------------------------------------------
def mc_task(name="tiny_mc:1", shots=0, n=6) -> Task:
    items = [Item(id=str(i), input=f"{i} plus {i}?", choices=(str(2 * i), f"{2 * i + 1}x", "banana"),
                  gold=(i % 3,)) for i in range(n)]
    return register(Task(name=name, family=name.split(":")[0], axis="none", level=1,
                         level_rank=0, kind="mc", loader=lambda: items, shots=shots))


def test_mc_choice_is_the_argmax_of_mean_logprob_per_token(loaded):
    task = mc_task()
    results = evaluate(loaded, [task.name], progress=False)
    assert len(results.examples) == 6
    for ex in results.examples:
        item = next(it for it in task.items if it.id == ex.example_id)
        prompt = task.prompt(item, 0)
        context = loaded.encode(prompt)
        sums = [hand_logprob(loaded.model, context, loaded.encode(" " + c)) for c in item.choices]
        lengths = [len(loaded.encode(" " + c)) for c in item.choices]
        means = [s / n for s, n in zip(sums, lengths)]
        assert ex.choice_scores_sum == pytest.approx(sums, abs=1e-5)
        assert ex.choice_scores == pytest.approx(means, abs=1e-5)
        best = max(range(3), key=lambda i: means[i])
        assert ex.prediction == item.choices[best]
        assert ex.correct == float(best == item.gold[0])
        others = [m for i, m in enumerate(means) if i != item.gold[0]]
        assert ex.margin == pytest.approx(means[item.gold[0]] - max(others), abs=1e-5)
        assert (ex.margin > 0) == (ex.correct == 1.0)
        assert ex.chance == pytest.approx(1 / 3)
    by_sum = evaluate(loaded, [task.name], progress=False, mc_score="sum")
    for ex in by_sum.examples:
        s = ex.choice_scores_sum
        item = next(it for it in task.items if it.id == ex.example_id)
        assert ex.prediction == item.choices[s.index(max(s))]


def test_batch_size_and_packing_do_not_change_results(loaded):
    task = mc_task("tiny_mc_shots:2", shots=2, n=9)
    runs = [evaluate(loaded, [task.name], progress=False, batch_size=b, packing=p)
            for b, p in ((1, False), (4, True), (64, True))]
    for ex in runs[0].examples:
        for other in runs[1:]:
            twin = next(e for e in other.examples if e.example_id == ex.example_id)
            assert twin.choice_scores_sum == pytest.approx(ex.choice_scores_sum, abs=1e-5)
            assert twin.prediction == ex.prediction


def nested_option_tasks(n=8) -> list[Task]:
    """Three levels asking the same questions with 2, 3 and all 4 of the choices."""
    names = []
    for k in (2, 3, 4):
        items = [Item(id=str(i), input=f"{i} times 3?", choices=(str(3 * i), "kiwi", f"{i}0",
                                                                  "banana")[:k], gold=(0,))
                 for i in range(n)]
        names.append(register(Task(name=f"tiny_nested:{k}", family="tiny_nested", axis="options",
                                   level=k, level_rank=k, kind="mc",
                                   loader=lambda items=items: items)).name)
    return names


def test_levels_scored_together_match_levels_scored_alone(loaded):
    """Nested option sets scored in one pass through a cache give each level's own results,
    and evaluating the levels afterwards runs no forward: every pair is already known."""
    from prunelab.evaluate.runner import score_together
    from prunelab.evaluate.scoring import ScoreCache

    names = nested_option_tasks()
    texts = [Item(id="0", text="the quick brown fox"), Item(id="1", text="jumps over a dog")]
    names.append(register(Task(name="tiny_ppl_together:1", family="tiny_ppl_together",
                               axis="none", level=1, level_rank=0, kind="rolling",
                               metric="bits_per_byte", loader=lambda: texts)).name)
    alone = {name: evaluate(loaded, [name], progress=False) for name in names}
    cache = ScoreCache()
    score_together(loaded, [(name, None) for name in names], scores=cache)
    assert len(cache) == 8 * 4 + 2  # the union of the choices once, and the rolling windows
    # Windows after the same BOS are not piled into one row: no row outgrows its longest group.
    windows = [Group([1], [[5, 6, 7]]), Group([1], [[8, 9]]), Group([1], [[5, 6, 7], [4]])]
    rows = ScoreCache()._merged_rows(windows)
    assert [r.continuations for r in rows] == [[[5, 6, 7], [4]], [[8, 9]]]
    forwards = []
    handle = loaded.model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        together = {name: evaluate(loaded, [name], progress=False, scores=cache) for name in names}
    finally:
        handle.remove()
    assert not forwards
    for name in names:
        for ex, twin in zip(alone[name].examples, together[name].examples):
            assert twin.example_id == ex.example_id
            if ex.choice_scores_sum is None:  # the rolling level
                assert twin.loglik == pytest.approx(ex.loglik, abs=1e-4)
                continue
            assert twin.choice_scores_sum == pytest.approx(ex.choice_scores_sum, abs=1e-5)
            assert twin.prediction == ex.prediction and twin.correct == ex.correct


def test_a_study_scores_a_models_levels_together_and_forgets_them_when_it_changes(tmp_path,
                                                                                 monkeypatch):
    """The real backend scores a compressed model's levels in one pass; every level's score
    is the one it gets alone, on the dense and on the pruned model (the cache is emptied
    when the model changes)."""
    import prunelab
    from prunelab.study.backend import PrunelabBackend
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.runner import run_study
    from prunelab.study.store import Store

    names = nested_option_tasks()
    monkeypatch.setattr(PrunelabBackend, "load_model",
                        lambda self, model, dtype="fp32": tiny_loaded("llama"))
    recipe = parse_recipe({"name": "together", "models": ["smollm2-135m"], "tasks": names,
                           "compressions": [{"method": "magnitude", "sparsity": [0.5]}],
                           "eval": {"limit": None}, "analysis": {"n_boot": 50}})
    run_study(recipe, tmp_path / "run", backend=PrunelabBackend(), progress=False)
    with Store(tmp_path / "run" / "results.sqlite") as store:  # each item's gold-vs-rest margin
        stored = {(row["method"], row["task"]): [e["margin"] for e in store.examples(row["key"])]
                  for row in store.points()}
    dense, pruned = tiny_loaded("llama"), tiny_loaded("llama")
    prunelab.prune(pruned, "magnitude", 0.5, progress=False)
    for method, model in (("dense", dense), ("magnitude", pruned)):
        for name in names:
            alone = [ex.margin for ex in evaluate(model, [name], progress=False).examples]
            assert stored[(method, name)] == pytest.approx(alone, abs=1e-5)
    assert stored[("dense", names[0])] != pytest.approx(stored[("magnitude", names[0])], abs=1e-3)


# --- generation ---------------------------------------------------------------------------
def test_batched_generation_matches_one_at_a_time():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompts = [tok(t, add_special_tokens=False).input_ids
               for t in ("hello", "a much longer prompt here", "xy", "the cat sat on")]
    batched = generate_greedy(model, tok, prompts, max_new_tokens=6, batch_size=4)
    single = [generate_greedy(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    for p, new in zip(prompts, single):  # greedy: each token is the argmax given the prefix
        seq = p + new
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0]
        for i, token in enumerate(new):
            assert int(logits[len(p) - 1 + i].argmax()) == token


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3"])
def test_gold_answers_scored_from_the_generation_cache_match_a_pass_of_their_own(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    rng = random.Random(1)
    prompts = [[rng.randrange(4, 260) for _ in range(n)] for n in (3, 11, 7, 20, 5)]
    golds = [[rng.randrange(4, 260) for _ in range(n)] for n in (4, 1, 6, 2, 3)]
    golds[2] = None  # an item without a gold answer
    tokens, sums = generate_and_score(model, tok, prompts, golds, max_new_tokens=5,
                                      batch_size=3)
    assert tokens == generate_greedy(model, tok, prompts, max_new_tokens=5, batch_size=3)
    assert sums[2] is None
    if family == "gemma3":  # sliding-window layers: the cache is not cut back, scored apart
        assert sums == [None] * len(prompts)
        return
    for prompt, gold, cached in zip(prompts, golds, sums):
        if gold is not None:
            assert cached == pytest.approx(hand_logprob(model, prompt, gold), abs=1e-4)


def test_generation_gives_the_same_gold_logprob_with_and_without_the_cache(loaded, monkeypatch):
    import prunelab.evaluate.runner as runner

    items = [Item(id=str(k), input=f"what is {k} and {k + 1}?", targets=(f"{2 * k + 1}",))
             for k in range(7)]
    register(Task(name="tiny_gold:1", family="tiny_gold", axis="none", level=1, level_rank=0,
                  kind="generate", metric="contains", loader=lambda: items))
    cached = evaluate(loaded, ["tiny_gold:1"], progress=False, batch_size=4).examples
    real = runner.generate_and_score
    monkeypatch.setattr(runner, "generate_and_score",
                        lambda *a, **kw: (real(*a, **kw)[0], [None] * len(items)))
    apart = evaluate(loaded, ["tiny_gold:1"], progress=False, batch_size=4).examples
    for one, other in zip(cached, apart):
        assert one.prediction == other.prediction
        assert one.gold_logprob == pytest.approx(other.gold_logprob, abs=1e-5)


def test_generation_reads_the_first_non_empty_line(loaded, monkeypatch):
    import prunelab.evaluate.runner as runner

    tok = loaded.tokenizer
    outputs = {"0": "\n Paris\nis nice", "1": "rome", "2": "\n\n"}
    items = [Item(id=k, input=f"capital {k}?", targets=("Paris", "Rome")) for k in outputs]
    task = register(Task(name="tiny_gen:1", family="tiny_gen", axis="none", level=1,
                         level_rank=0, kind="generate", metric="contains", loader=lambda: items))

    def fake_generate(model, tokenizer, prompts, golds, **kw):
        # no cached gold sums: the runner scores the gold answers in a pass of their own
        return ([tok(outputs[it.id], add_special_tokens=False).input_ids for it in items],
                [None] * len(items))

    monkeypatch.setattr(runner, "generate_and_score", fake_generate)
    results = evaluate(loaded, [task.name], progress=False)
    got = {ex.example_id: ex for ex in results.examples}
    assert got["0"].prediction == "Paris" and got["0"].correct == 1.0
    assert got["0"].scores["exact_match"] == 1.0
    assert got["1"].prediction == "rome" and got["1"].correct == 1.0
    assert got["2"].prediction == "" and got["2"].correct == 0.0
    assert all(ex.gold_logprob is not None and ex.gold_logprob < 0 for ex in results.examples)


def test_generation_stops_at_a_newline_after_text():
    from prunelab.evaluate.scoring import _cut

    nl, blank = {10}, {10, 32}
    assert _cut([10, 5, 6, 10, 7], nl, blank, eos=2) == [10, 5, 6, 10]
    assert _cut([5, 2, 6], nl, blank, eos=2) == [5, 2]
    assert _cut([32, 10, 32], nl, blank, eos=2) == [32, 10, 32]


# --- rolling log-likelihood ------------------------------------------------------------------
def test_rolling_task_reports_bits_per_byte(loaded):
    texts = ["the quick brown fox", "jumps over the lazy dog " * 20]  # second > 256 tokens
    items = [Item(id=str(i), text=t) for i, t in enumerate(texts)]
    task = register(Task(name="tiny_ppl:1", family="tiny_ppl", axis="none", level=1, level_rank=0,
                         kind="rolling", metric="bits_per_byte", loader=lambda: items))
    results = evaluate(loaded, [task.name], progress=False)
    first = results.examples[0]
    ids = [loaded.tokenizer.bos_token_id] + loaded.encode(texts[0])
    assert first.loglik == pytest.approx(hand_logprob(loaded.model, ids[:1], ids[1:]), abs=1e-4)
    assert first.n_tokens == len(texts[0]) and first.n_bytes == len(texts[0])
    assert results.examples[1].n_tokens == len(texts[1])
    (row,) = results.summary()
    total = -sum(e.loglik for e in results.examples) / math.log(2)
    assert row["score"] == pytest.approx(total / sum(len(t) for t in texts))
    assert row["metric"] == "bits_per_byte"
    # chance: a uniform guess over the output vocabulary, log2(V) bits a token, per byte
    vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
    tokens, n_bytes = sum(e.n_tokens for e in results.examples), sum(len(t) for t in texts)
    assert row["chance"] == pytest.approx(tokens * math.log2(vocabulary) / n_bytes)
    assert row["at_chance"] == (row["ci_high"] >= row["chance"])


# --- metrics and summaries ----------------------------------------------------------------------
def test_answer_matching():
    assert metrics.normalize("The  Denver Broncos!") == "denver broncos"
    assert metrics.exact_match("denver broncos.", ["The Denver Broncos"]) == 1.0
    assert metrics.contains_match("Denver", ["Denver Broncos"]) == 1.0
    assert metrics.contains_match("the Denver Broncos won", ["Denver Broncos"]) == 1.0
    assert metrics.contains_match("", ["Denver Broncos"]) == 0.0
    assert metrics.contains_match("the", ["the Broncos"]) == 0.0  # normalises to empty
    assert metrics.token_f1("Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)
    assert metrics.first_line("\n  Paris\nis nice") == "Paris"


def test_wilson_interval():
    low, high = metrics.wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert metrics.wilson(0, 10)[0] == 0.0 and metrics.wilson(10, 10)[1] == pytest.approx(1.0)


def _ex(task, i, correct, margin=None, chance=0.25, rank=0):
    return ExampleResult(task=task, family=task.split(":")[0], axis="x", level=rank,
                         level_rank=rank, example_id=str(i), metric="accuracy",
                         correct=correct, margin=margin, chance=chance)


def test_summary_flags_levels_at_chance_and_roundtrips(tmp_path):
    rows = [_ex("f:easy", i, float(i % 10 != 0)) for i in range(100)]
    rows += [_ex("f:hard", i, float(i % 4 == 0), rank=1) for i in range(100)]
    results = EvalResults(rows)
    easy, hard = results.summary()
    assert easy["score"] == 0.9 and not easy["at_chance"] and easy["ci_low"] > 0.8
    assert hard["score"] == 0.25 and hard["at_chance"] and hard["ci_low"] < 0.25 < hard["ci_high"]
    assert set(easy) == {"task", "family", "axis", "level", "level_rank", "n", "metric", "score",
                         "ci_low", "ci_high", "chance", "at_chance"}
    path = tmp_path / "r.jsonl"
    results.to_jsonl(path)
    assert len(path.read_text().splitlines()) == 200
    assert EvalResults.from_jsonl(path).summary() == results.summary()
    assert "at chance" in results.table()


def test_model_facing_difficulty_bins_by_dense_margin():
    dense = EvalResults([_ex("t:1", i, float(i >= 4), margin=i - 3.5) for i in range(8)])
    bins = margin_bins(dense, n_bins=4)
    assert [bins[("t:1", str(i))] for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    pruned = EvalResults([_ex("t:1", i, float(i >= 6)) for i in range(8)])
    summary = {r["level"]: r for r in by_dense_margin(pruned, dense, n_bins=4).summary()}
    assert summary["q1"]["level_rank"] == 3 and summary["q4"]["level_rank"] == 0
    assert summary["q1"]["score"] == 0.0 and summary["q4"]["score"] == 1.0
    assert summary["q1"]["axis"] == "dense_margin"


# --- bad input ------------------------------------------------------------------------------
def test_prompt_longer_than_context_is_an_error_before_any_forward(loaded):
    items = [Item(id="0", input="x" * 400, choices=("a", "b"), gold=(0,))]
    register(Task(name="tiny_long:1", family="tiny_long", axis="none", level=1, level_rank=0,
                  kind="mc", loader=lambda: items))
    with pytest.raises(PrunelabError, match="takes at most 256"):
        evaluate(loaded, ["tiny_long:1"], progress=False)


def test_limit_and_unknown_task_errors(loaded):
    mc_task()
    with pytest.raises(PrunelabError, match="larger than task"):
        evaluate(loaded, ["tiny_mc:1"], limit=7, progress=False)
    with pytest.raises(PrunelabError, match="unknown task"):
        evaluate(loaded, ["nope"], progress=False)


# --- CLI -------------------------------------------------------------------------------------
def _app():
    from prunelab.cli import app

    return app


def test_cli_eval_writes_results_and_bad_input_writes_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import prunelab.zoo.models as zoo

    monkeypatch.setattr(zoo, "load_model", lambda name, **_: tiny_loaded("llama"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"{i}?", "choices": ["yes", "no"], "answer": i % 2})
                            + "\n" for i in range(5)))
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\nkind: mc\ndata: d.jsonl\n")
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(_app(), ["eval", "tiny", "--tasks", str(spec), "--out", str(out),
                                    "--no-progress", "--summary", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "mine" in result.output and "95% CI" in result.output
    assert len(out.read_text().splitlines()) == 5
    assert json.loads((tmp_path / "s.json").read_text())["summary"][0]["n"] == 5
    bad_out = tmp_path / "bad.jsonl"
    result = runner.invoke(_app(), ["eval", "tiny", "--tasks", str(spec), "--limit", "9",
                                    "--out", str(bad_out), "--no-progress"])
    assert isinstance(result.exception, PrunelabError) and not bad_out.exists()
    assert list(tmp_path.glob(".bad.jsonl*")) == []


def test_cli_tasks_lists_families():
    from typer.testing import CliRunner

    result = CliRunner().invoke(_app(), ["tasks", "--no-sizes"])
    assert result.exit_code == 0
    for word in ("arithmetic:5", "digits", "squad_book:closed", "multiemo:ja", "licence"):
        assert word in result.output


def test_a_task_may_decide_by_sum_and_the_caller_may_override(loaded):
    items = [Item(id=str(i), input=f"mood {i}", choices=("good", "ambivalent"), gold=(i % 2,))
             for i in range(4)]
    task = register(Task(name="tiny_sum:1", family="tiny_sum", axis="none", level=1,
                         level_rank=0, kind="mc", mc_score="sum", loader=lambda: items))
    for requested, used in ((None, "sum"), ("mean", "mean")):
        for ex in evaluate(loaded, [task.name], progress=False, mc_score=requested).examples:
            scores = ex.choice_scores_sum if used == "sum" else ex.choice_scores
            assert ex.mc_score == used
            assert ex.prediction == items[0].choices[scores.index(max(scores))]


def test_continuous_measures_of_an_example():
    from prunelab.evaluate.metrics import continuous_metric, get_metric

    mc = {"metric": "accuracy", "choices": ["a", "b", "c", "d"], "target": "b",
          "choice_scores": [0.0, 0.0, -100.0, -100.0], "choice_scores_sum": [0.0, -1.0, 0, 0],
          "mc_score": "mean", "correct": 1.0, "chance": 0.25}
    metric = continuous_metric(mc)
    assert metric.name == "gold_prob" and metric.chance(mc) == 0.25
    assert metric.example(mc)[0] == pytest.approx(0.5)  # the decision's (mean) scores
    assert metric.example({**mc, "mc_score": "sum"})[0] == pytest.approx(
        math.exp(-1) / (1 + math.exp(-1) + 2))
    generate = {"metric": "contains", "gold_logprob": -2.0, "correct": 0.0}
    assert continuous_metric(generate).name == "gold_logprob"
    assert get_metric("gold_logprob").relative(-3.0, -2.0) == pytest.approx(math.exp(-1))
    assert get_metric("bits_per_byte").relative(2.0, 1.0) == pytest.approx(0.5)
    assert get_metric("accuracy").relative(0.3, 0.6) == pytest.approx(0.5)
