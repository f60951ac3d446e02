"""Statistics: rank correlations, verdicts with intervals, chance exclusion, breaking points."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from prunelab.study.results import load_run
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.stats import crossing, kendall, spearman
from prunelab.study.testing import FakeBackend


def test_rank_correlations_match_scipy_and_handle_ties():
    rng = np.random.default_rng(0)
    x = np.array([0, 1, 2, 3, 4], float)
    ys = np.round(rng.normal(size=(50, 5)), 1)  # rounding makes ties
    rho, tau = spearman(x, ys), kendall(x, ys)
    for y, r, t in zip(ys, rho, tau):
        assert r == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
        assert t == pytest.approx(scipy_stats.kendalltau(x, y).statistic)
    assert spearman(x, np.ones((1, 5)))[0] == 0.0  # constant drop: no ordering, not NaN
    assert kendall(x, np.ones((1, 5)))[0] == 0.0


def test_crossing_interpolates_from_dense():
    xs = [0.2, 0.4, 0.6]
    assert crossing(xs, [0.95, 0.85, 0.3], 0.9) == pytest.approx(0.3)
    assert crossing(xs, [0.95, 0.85, 0.3], 0.5) == pytest.approx(0.4 + 0.2 * 0.35 / 0.55)
    assert crossing(xs, [0.99, 0.98, 0.97], 0.9) is None
    assert crossing(xs, [0.5, 0.4, 0.3], 0.9) == pytest.approx(0.2 * 0.1 / 0.5)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    recipe = parse_recipe({
        "name": "stats", "models": ["m"], "tasks": ["digits", "flat", "reverse", "objects"],
        "seeds": [0, 1],
        "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.5, 0.7]},
                         {"method": "wanda", "sparsity": [0.3, 0.5], "patterns": ["4:8"]}],
        "band_probe": {"starts": [0.0, 0.4, 0.8], "width": 0.1},
        "eval": {"limit": 400}, "analysis": {"n_boot": 300}})
    run_study(recipe, run_dir, backend=FakeBackend(size=400), progress=False)
    run = load_run(run_dir)
    yield run.analysis
    run.store.close()


def _verdict(analysis, arm, family):
    return next(v for v in analysis.verdicts if v["arm"] == arm and v["family"] == family)


def test_verdicts_recover_the_planted_answers(analysed):
    for arm in ("magnitude", "wanda"):
        harder = _verdict(analysed, arm, "digits")
        assert harder["verdict"] == "harder drops more"
        assert harder["slope_ci"][0] > 0 and harder["effect"] > 0.1 and harder["p_holm"] < 0.05
        assert harder["effect_ci"][0] > 0 and harder["spearman"] > 0
        assert _verdict(analysed, arm, "reverse")["verdict"] == "opposite"
        flat = _verdict(analysed, arm, "flat")
        assert flat["verdict"] == "no evidence"
        assert flat["slope_ci"][0] <= 0 <= flat["slope_ci"][1]
        assert 0 < flat["effect_bound"] < 0.2  # what 400 items per level still rule out
    # per sparsity: a rank interval only with four or more levels (digits has four)
    for m in analysed.monotonicity:
        has_ci = all(map(math.isfinite, m["spearman_ci"]))
        assert has_ci == (m["levels_used"] >= 4), m
    # N:M patterns are their own arm, x = the pattern's sparsity
    assert _verdict(analysed, "wanda N:8", "digits")["sparsities"] == 1


def test_levels_at_chance_are_flagged_and_excluded(analysed):
    objects = _verdict(analysed, "magnitude", "objects")
    assert objects["excluded_at_chance"] == ["7"] and objects["levels_used"] == 2
    dense7 = next(d for d in analysed.dense if d["task"] == "objects:7")
    assert dense7["at_chance"] and dense7["chance"] == pytest.approx(1 / 7)
    mono = [m for m in analysed.monotonicity if m["family"] == "objects"]
    assert mono and all(len(m["drops"]) == 2 for m in mono)


def test_relative_rows_have_intervals_and_seeds(analysed):
    wanda = [r for r in analysed.relative if r["arm"] == "wanda"]
    assert wanda and all(r["seeds"] == 2 for r in wanda)
    mag = [r for r in analysed.relative if r["arm"] == "magnitude"]
    assert all(r["seeds"] == 1 for r in mag)
    for r in wanda + mag:
        if math.isfinite(r["relative"]) and not r["dense_at_chance"]:
            assert r["ci_low"] <= r["relative"] + 1e-9 and r["relative"] <= r["ci_high"] + 1e-9
    # harder digits fall below 90% of dense at a lower sparsity than easy ones
    cross = {t["level"]: t["below_90"] for t in analysed.thresholds
             if t["arm"] == "magnitude" and t["family"] == "digits"}
    assert cross[4] < cross[1]


def test_band_probe_rows(analysed):
    band = analysed.sweeps
    assert {r["x"] for r in band} == {0.0, 0.4, 0.8}
    assert {r["x_field"] for r in band} == {"stages[0].options.band_low"}
    assert not any(v["arm"].startswith("magnitude-band") for v in analysed.verdicts)
    low = np.mean([r["relative"] for r in band if r["x"] == 0.0 and r["family"] == "digits"])
    high = np.mean([r["relative"] for r in band if r["x"] == 0.8 and r["family"] == "digits"])
    assert high < low  # the fake makes bands of larger weights hurt more


def test_above_chance_measure_differs_from_relative(tmp_path):
    recipe = parse_recipe({"name": "ac", "models": ["m"], "tasks": ["objects:3"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.7]}],
                           "eval": {"limit": 200}, "analysis": {"measure": "above_chance",
                                                                "n_boot": 100}})
    run_study(recipe, tmp_path, backend=FakeBackend(size=200), progress=False)
    run = load_run(tmp_path)
    (row,) = run.analysis.relative
    dense = run.analysis.dense[0]["score"]
    pruned = next(p["score"] for p in run.points if p["method"] == "magnitude")
    assert row["relative"] == pytest.approx((pruned - 1 / 3) / (dense - 1 / 3))
    run.store.close()


def test_at_chance_is_decided_on_the_continuous_margin_whatever_the_measure():
    """A 0/1 count of 40 items whose interval reaches chance, but whose gold probabilities
    sit clearly above it, is not at chance; and the other way round."""
    from prunelab.study.stats import collect

    def point(task, stored_at_chance):
        return {"model": "m", "task": task, "method": "dense", "key": task, "family": "f",
                "axis": "a", "level": task, "level_rank": int(task[-1]), "chance": 0.25,
                "metric": "accuracy", "at_chance": stored_at_chance, "score": 0.3,
                "config": {}, "arm": "dense", "x": 0.0, "seed": None}

    def record(i, gold):
        rest = math.log((1 - gold) / 3)
        return {"example_id": str(i), "choices": ["a", "b", "c", "d"], "target": "a",
                "choice_scores": [math.log(gold), rest, rest, rest]}

    gold = {"t0": [0.45] * 40, "t1": [0.25 + 0.01 * ((-1) ** i) for i in range(40)]}
    points = [point("t0", True), point("t1", False)]
    examples = lambda key: [{"example_id": str(i), "value": float(i < 12), "weight": 1.0}
                            for i in range(40)]
    records = lambda key: [record(i, g) for i, g in enumerate(gold[key])]
    for measure in ("task", "continuous"):
        at_chance = {lv.task: lv.dense_at_chance for lv in collect(points, examples, records,
                                                                   measure)}
        assert at_chance == {"t0": False, "t1": True}
    # without the records, the stored 0/1 decision stands
    assert {lv.task: lv.dense_at_chance for lv in collect(points, examples)} == {
        "t0": True, "t1": False}


def test_a_text_scored_no_better_than_a_uniform_guess_is_at_chance():
    """Bits per byte is lower-is-better: a level is at chance when its items are not credibly
    below a uniform guess over the vocabulary (their chance), whatever their spread."""
    from prunelab.evaluate.metrics import get_metric
    from prunelab.study.stats import _at_chance

    bpb = get_metric("bits_per_byte")
    rng = np.random.default_rng(0)

    def rows(bits_per_byte):  # 40 texts of 50 bytes at about this many bits per byte
        return [{"value": b * 50 * math.log(2), "weight": 50.0, "chance": 6.0, "metric": bpb}
                for b in bits_per_byte + rng.normal(0, 0.3, 40)]

    assert not _at_chance(rows(np.full(40, 3.0)))  # far below the uniform guess
    assert _at_chance(rows(np.full(40, 6.0)))  # the uniform guess itself
    assert _at_chance(rows(np.full(40, 6.5)))  # worse than knowing nothing
    accuracy = get_metric("gold_prob")  # higher is better: above chance is not at chance
    assert not _at_chance([{"value": 0.6 + 0.01 * i, "weight": 1.0, "chance": 0.25,
                            "metric": accuracy} for i in range(10)])
