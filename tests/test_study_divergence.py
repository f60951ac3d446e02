"""Divergence as a study metric, on the fake backend: stored beside perplexity, reported with
its rank correlation to the task drop."""

import math

import pytest

from prunelab.study.predictors import mean_drops, predictor_table
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend

RECIPE = {"name": "div", "models": ["fake-model"], "tasks": ["digits", "flat"],
          "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.5, 0.7]},
                           {"method": "wanda", "sparsity": [0.3, 0.5, 0.7]}],
          "perplexity": {"n_windows": 2}, "divergence": {"n_windows": 2, "seqlen": 64},
          "eval": {"limit": 40}, "analysis": {"n_boot": 200}}


CALLS: list = []


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("div") / "run"
    backend = FakeBackend()
    run_study(parse_recipe(RECIPE), path, backend=backend, progress=False)
    CALLS[:] = backend.calls
    return path


def test_divergence_is_measured_once_per_compressed_model_and_stored(run_dir):
    measured = [c for c in CALLS if c[0] == "divergence"]
    assert len(measured) == 6  # not for dense, once per compressed model (not per task)
    with Store.in_dir(run_dir) as store:
        rows = store.compressions()
    dense = [r for r in rows if not r["config"]["stages"]]
    assert dense and dense[0]["divergence"] is None
    pruned = [r for r in rows if r["config"]["stages"]]
    assert all(r["divergence"]["jsd"] > 0 and r["perplexity"] is not None for r in pruned)


def test_recipe_without_divergence_keeps_its_fingerprint():
    plain = {k: v for k, v in RECIPE.items() if k != "divergence"}
    before = parse_recipe(plain).fingerprint()
    assert parse_recipe({**plain, "divergence": None}).fingerprint() == before
    assert parse_recipe(RECIPE).fingerprint() != before
    with pytest.raises(Exception, match="n_windows"):
        parse_recipe({**RECIPE, "divergence": {"n_windows": 0}})


def test_predictors_rank_jsd_above_perplexity_on_the_fake(run_dir):
    # The fake's JSD follows each compression's damage; its perplexity only the sparsity, so
    # magnitude and wanda at one sparsity tie on perplexity but not on the drop.
    with Store.in_dir(run_dir) as store:
        points, comps = store.points(), store.compressions()
    drops = mean_drops(points)
    assert len(drops) == 6 and all(d >= 0 for d in drops.values())
    rows = {r["measure"]: r for r in predictor_table(points, comps, n_boot=300)}
    assert set(rows) == {"perplexity", "jsd", "kl_dense_compressed", "kl_compressed_dense",
                         "top1_agreement"}
    assert rows["jsd"]["rho"] > 0.9 and rows["top1_agreement"]["rho"] < -0.9
    assert rows["jsd"]["rho"] > rows["perplexity"]["rho"]
    low, high = rows["jsd"]["ci"]
    assert low <= rows["jsd"]["rho"] <= high
    assert sum(r["p_best"] for r in rows.values()) == pytest.approx(1.0)


def test_predictor_rho_matches_scipy(run_dir):
    from scipy.stats import spearmanr

    with Store.in_dir(run_dir) as store:
        points, comps = store.points(), store.compressions()
    drops = mean_drops(points)
    import json

    pairs = [(c["divergence"]["kl_compressed_dense"],
              drops[(c["model"], json.dumps(c["config"], sort_keys=True, default=str))])
             for c in comps if c["divergence"]]
    expected = spearmanr(*zip(*pairs)).statistic
    rows = {r["measure"]: r for r in predictor_table(points, comps, n_boot=100)}
    assert rows["kl_compressed_dense"]["rho"] == pytest.approx(expected)


def test_too_few_compressions_give_no_correlation():
    points = [{"method": "dense", "model": "m", "task": "t", "score": 0.8, "metric": "accuracy",
               "chance": 0.25, "config": {"compression": {"stages": [], "seed": None}}}]
    comps = []
    for s in (0.3, 0.5):
        config = {"stages": [{"method": "wanda", "sparsity": s}], "seed": 0}
        points.append({"method": "wanda", "model": "m", "task": "t", "score": 0.8 - s,
                       "metric": "accuracy", "chance": 0.25, "config": {"compression": config}})
        comps.append({"model": "m", "config": config, "perplexity": 10 + s,
                      "divergence": {"jsd": s}})
    rows = predictor_table(points, comps)
    assert rows and all(math.isnan(r["rho"]) for r in rows)


def test_report_shows_divergence_and_predictors(run_dir):
    from prunelab.report import build_report

    paths = build_report(run_dir)
    md = paths["md"].read_text()
    assert "## Divergence from the dense model" in md
    assert "## Which measure predicts task loss?" in md
    assert "the best predictor is" in md and "JSD (nats)" in md


def test_real_backend_compares_with_its_pristine_dense_copy(tmp_path):
    import torch

    from prunelab.study.backend import PrunelabBackend, _Handle
    from prunelab.study.measures import MEASURES
    from prunelab.study.measures.divergence import Divergence
    from prunelab.testing import tiny_loaded

    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 40)
    handle = _Handle(tiny_loaded("llama"))
    backend = PrunelabBackend()
    config = Divergence(source=str(text), seqlen=32, n_windows=2)
    measure = MEASURES["divergence"]
    same = backend.measure(handle, measure, config)
    assert same["jsd"] == 0.0 and same["top1_agreement"] == 1.0
    cached = handle.cache["divergence"][2]
    assert cached is not None  # the dense side, computed once for every compressed model
    with torch.no_grad():
        for p in handle.loaded.model.parameters():
            p.mul_((torch.rand_like(p) > 0.5).float())
    handle.dirty = True
    moved = backend.measure(handle, measure, config)
    assert handle.cache["divergence"][2] is cached
    assert 0 < moved["jsd"] <= math.log(2) and moved["tokens"] == 62
    backend.reset(handle)
    assert backend.measure(handle, measure, config)["jsd"] == 0.0


def test_refusal_is_measured_on_every_model_and_reported(tmp_path):
    from prunelab.report import build_report

    recipe = {**RECIPE, "divergence": None, "perplexity": None,
              "compressions": [{"method": "wanda", "sparsity": [0.1, 0.2, 0.3],
                                "options": {"only": "attention"}},
                               {"method": "wanda", "sparsity": [0.1, 0.2, 0.3]}],
              "refusal": {"max_new_tokens": 16}}
    backend = FakeBackend()
    run_study(parse_recipe(recipe), tmp_path / "run", backend=backend, progress=False)
    assert [c[2] for c in backend.calls if c[0] == "refusal"][0] == "dense"
    assert sum(c[0] == "refusal" for c in backend.calls) == 7  # dense + 6, once each
    with Store.in_dir(tmp_path / "run") as store:
        rows = store.compressions()
    assert all(r["refusal"]["summary"] for r in rows)
    paths = build_report(tmp_path / "run")
    md = paths["md"].read_text()
    assert "## Refusal under jailbreak prompts" in md and "| role-play |" in md
    assert "refusal rate and task performance vs sparsity" in md
    assert "judge's rate" not in md


def test_a_judge_models_rates_are_reported_beside_the_rules(tmp_path):
    from prunelab.report import build_report

    recipe = {**RECIPE, "divergence": None, "perplexity": None,
              "compressions": [{"method": "wanda", "sparsity": [0.2]}],
              "refusal": {"judge": "smollm2-135m"}}
    run_study(parse_recipe(recipe), tmp_path / "run", backend=FakeBackend(), progress=False)
    md = build_report(tmp_path / "run")["md"].read_text()
    assert "| judge's rate | judge's 95% CI | agreement |" in md
    assert "agrees with the keyword rule" in md


def test_refusal_sets_are_checked_before_any_model(tmp_path):
    from prunelab.study.backend import PrunelabBackend

    bad = tmp_path / "t.yaml"
    bad.write_text("- {name: x, template: 'no placeholder'}\n")
    recipe = parse_recipe({"name": "r", "models": ["smollm2-135m"], "tasks": ["synth_arithmetic:1"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.1]}],
                           "refusal": {"templates": str(bad)}})
    problems = PrunelabBackend().check(recipe)
    assert ("refusal.templates", f"{bad}: template 'x' has no {{request}} placeholder") in problems
    judged = parse_recipe({"name": "r", "models": ["smollm2-135m"], "tasks": ["synth_arithmetic:1"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.1]}],
                           "refusal": {"judge": "no-such-judge"}})
    assert [p for p in PrunelabBackend().check(judged) if p[0] == "refusal.judge"] == [
        ("refusal.judge", "unknown model 'no-such-judge': use one of "
         + ", ".join(__import__("prunelab.zoo.models", fromlist=["ZOO"]).ZOO)
         + ", a model trained here (`prunelab train-tiny`, listed by `prunelab models`) or a "
           "local model directory")]


def test_divergence_text_is_checked_before_any_model():
    from prunelab.study.backend import PrunelabBackend

    recipe = parse_recipe({"name": "r", "models": ["smollm2-135m"], "tasks": ["synth_arithmetic:1"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.1]}],
                           "divergence": {"source": "no-such-text"}})
    problems = PrunelabBackend().check(recipe)
    assert any(path == "divergence" and "unknown text source" in problem
               for path, problem in problems), problems
