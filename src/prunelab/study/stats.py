"""The statistics the Junk DNA paper lacked: intervals and rank tests for "harder drops more".

Vocabulary:
- an *arm* is one chain of compression stages swept along one field, its x: "wanda"
  (x = sparsity), "wanda N:8" (N:M patterns with M = 8, x = their sparsity), "sparsegpt
  percdamp=0.1", "magnitude-band 10%" (x = the band's start). The planner names arms
  (`prunelab.study.plan`) and the store keeps the name and x beside every point. Verdicts
  and thresholds are read along arms whose x is an amount of compression (a sparsity);
  other sweeps (a band's position) give relative performance only;
- *relative* performance of a level = pruned score / dense score (lower-is-better metrics are
  inverted), or with measure "above_chance" (pruned − chance) / (dense − chance);
- *drop* = 1 − relative.

Every interval is a percentile bootstrap that resamples the items of each level (dense and
pruned results are paired: the same items, so the same resample is used for both) and, where a
compression ran with several calibration seeds, the seeds. Where a family's levels ask the
same items in another guise (`Task.paired_levels`: more options, another language), an item
is resampled at every level together, so levels are compared item by item. Levels where the
dense model is at chance tell nothing about pruning: they are flagged and left out of every
rank statistic. At chance is decided on the continuous measure whichever measure the verdicts
use: the 95% interval of the dense model's mean margin of gold probability over each item's
chance reaches 0. A 0/1 count at a few tens of items flips with sampling noise; the margin
moves smoothly.

The verdict per family and arm comes from the slope of drop on level rank, pooled over the
arm's sparsities, with a bootstrap p-value Holm-adjusted across the whole analysis
(`prunelab.study.trend`): "harder drops more" / "opposite" when it is significant and no
adjacent pair of levels is credibly reversed, "not monotonic" when one is, and otherwise
"no evidence", with the largest extra drop of the hardest level the data still allow.
Spearman's ρ and Kendall's τ are descriptive; with fewer than four levels they get no interval.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from prunelab.evaluate.metrics import Metric, continuous_metric, get_metric
from prunelab.study import trend
from prunelab.study.trend import percentile_ci

VERDICTS = ("harder drops more", "no evidence", "opposite", "not monotonic")


@dataclass
class Level:
    """One task level of one model: dense results, and pruned results per (arm, x, seed)."""

    model: str
    task: str
    family: str
    axis: str
    level: object
    level_rank: int
    chance: float | None
    metric: Metric  # how item values aggregate and compare with dense
    dense_at_chance: bool
    ids: list[str]
    dense: tuple[np.ndarray, np.ndarray]  # (values, weights) aligned with ids
    pruned: dict[tuple[str, float], dict[object, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=dict)
    paired: bool = False  # its family's levels ask the same items (see the module docstring)


def arm_of(point: dict) -> tuple[str, float]:
    """(arm label, x) of a point; see the module docstring."""
    return point["arm"], float(point["x"])


def collect(points: list[dict], examples, records=None,
            item_measure: str = "task") -> list[Level]:
    """Build Levels from store points; `examples(key)` returns that point's example rows
    (value and weight as the task's own metric scored them).

    With `records(key)` (the full example records), the dense model is at chance when the 95%
    interval of its mean margin over each item's chance reaches 0 (`_at_chance`); without
    them, the stored flag of the dense point decides. With item_measure "continuous" every
    level is measured with the continuous measure of its kind
    (`prunelab.evaluate.metrics.continuous_metric`: the gold choice's probability for multiple
    choice, the gold answer's log-probability for generation)."""
    if item_measure not in ("task", "continuous"):
        raise ValueError(f"item_measure {item_measure!r}")
    if item_measure == "continuous" and records is None:
        raise ValueError("the continuous measure needs the example records")
    dense = {(p["model"], p["task"]): p for p in points if p["method"] == "dense"}
    levels: dict[tuple[str, str], Level] = {}
    continuous = item_measure == "continuous"
    rows_of = (lambda key: _continuous_rows(records(key))) if continuous else examples
    for (model, task), p in dense.items():
        rows = {r["example_id"]: r for r in rows_of(p["key"]) if r["value"] is not None}
        ids = list(rows)
        metric = (next((r["metric"] for r in rows.values()), get_metric(p["metric"]))
                  if continuous else get_metric(p["metric"]))
        margins = ({} if records is None else rows if continuous else
                   {r["example_id"]: r for r in _continuous_rows(records(p["key"]), mc_only=True)})
        if margins:
            at_chance = _at_chance([margins[i] for i in ids if i in margins])
        else:  # no choice probabilities recorded: the stored 0/1 decision
            at_chance = p["at_chance"]
            if at_chance is None:  # no interval stored: at chance if the score is not above it
                at_chance = p["chance"] is not None and (p["score"] or 0) <= p["chance"]
        levels[(model, task)] = Level(
            model, task, p["family"], p["axis"], p["level"], p["level_rank"], p["chance"],
            metric, bool(at_chance), ids,
            (np.array([rows[i]["value"] for i in ids], float),
             np.array([rows[i]["weight"] for i in ids], float)),
            paired=bool((p.get("config") or {}).get("paired_levels")))
    for p in points:
        if p["method"] == "dense" or (p["model"], p["task"]) not in levels:
            continue
        lv = levels[(p["model"], p["task"])]
        rows = {r["example_id"]: r for r in rows_of(p["key"])}
        # Pair by example id; an item the pruned run lacks (should not happen) counts as wrong.
        v = np.array([(rows[i]["value"] or 0.0) if i in rows else 0.0 for i in lv.ids], float)
        w = np.array([rows[i]["weight"] if i in rows else 1.0 for i in lv.ids], float)
        lv.pruned.setdefault(arm_of(p), {})[p["seed"]] = (v, w)
    return sorted(levels.values(), key=lambda lv: (lv.model, lv.family, lv.level_rank))


def _continuous_rows(records: list[dict], mc_only: bool = False) -> list[dict]:
    rows = []
    for record in records:
        if mc_only and record.get("choice_scores") is None:
            continue
        metric = continuous_metric(record)
        value, weight = metric.example(record)
        rows.append({"example_id": str(record.get("example_id")), "value": value,
                     "weight": weight, "chance": metric.chance(record), "metric": metric})
    return rows


def _at_chance(rows: list[dict]) -> bool:
    """Whether the mean margin of each item's score over its chance (below it, for a
    lower-is-better measure) is not credibly above 0 (normal approximation; a continuous
    measure varies smoothly, unlike a 0/1 count at 40 items)."""
    margins = np.array([(1 if r["metric"].higher_is_better else -1)
                        * (r["metric"].example_score(r["value"], r["weight"]) - r["chance"])
                        for r in rows if r["chance"] is not None], float)
    if margins.size < 2:
        return False
    low = margins.mean() - 1.959964 * margins.std(ddof=1) / math.sqrt(margins.size)
    return bool(low <= 0)


# -- rank correlations, vectorised over bootstrap replicates --------------------------------------


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho between x [k] and each row of y [..., k]; 0 where y is constant."""
    y = np.atleast_2d(y)
    rx = _ranks(np.asarray(x, float)[None, :])[0]
    ry = _ranks(y)
    rx = rx - rx.mean()
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denom = np.sqrt((rx**2).sum() * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ry * rx).sum(axis=-1) / denom
    return np.where(denom > 0, rho, 0.0)


def kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between x [k] and each row of y [..., k]; 0 where y is constant."""
    y = np.atleast_2d(y)
    x = np.asarray(x, float)
    i, j = np.triu_indices(len(x), k=1)
    sx = np.sign(x[j] - x[i])
    sy = np.sign(y[..., j] - y[..., i])
    n0 = len(i)
    tx = n0 - np.count_nonzero(sx)  # pairs tied in x
    ty = n0 - np.count_nonzero(sy, axis=-1)
    denom = np.sqrt((n0 - tx) * (n0 - ty))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (sx * sy).sum(axis=-1) / denom
    return np.where(denom > 0, tau, 0.0)


# -- bootstrap of relative performance -------------------------------------------------------------


def _score(v: np.ndarray, w: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """sum(v)/sum(w) over the items `idx` [B, n] (or all items when idx is None)."""
    if idx is None:
        return np.array([v.sum() / w.sum()])
    return v[idx].sum(axis=-1) / w[idx].sum(axis=-1)


def _relative(lv: Level, key, idx, seed_pick, measure: str) -> np.ndarray:
    """Relative performance of level `lv` under arm/x `key`, per bootstrap replicate [B]."""
    dense = _score(*lv.dense, idx)
    runs = lv.pruned[key]
    per_seed = np.stack([_score(v, w, idx) for v, w in runs.values()])  # [R, B]
    if seed_pick is None or per_seed.shape[0] == 1:
        pruned = per_seed.mean(axis=0)
    else:
        pick = seed_pick[:, : per_seed.shape[0]] % per_seed.shape[0]  # [B, R]
        pruned = per_seed[pick, np.arange(per_seed.shape[1])[:, None]].mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if measure == "above_chance" and lv.chance is not None and lv.metric.chance_applies:
            return (pruned - lv.chance) / (dense - lv.chance)
        return lv.metric.relative(pruned, dense)


@dataclass
class FamilyBoot:
    """Relative performance of one family's levels over one arm's x values."""

    model: str
    family: str
    arm: str
    levels: list[Level]  # ordered by level_rank
    xs: list[float]
    point: np.ndarray  # [L, X] on all data
    boot: np.ndarray  # [B, L, X]


def bootstrap_family(levels: list[Level], arm: str, n_boot: int, seed: int,
                     measure: str) -> FamilyBoot:
    rng = np.random.default_rng(seed)
    xs = sorted({x for lv in levels for (a, x) in lv.pruned if a == arm})
    max_seeds = max(len(runs) for lv in levels for (a, _), runs in lv.pruned.items() if a == arm)
    seed_pick = rng.integers(0, max_seeds, size=(n_boot, max_seeds)) if max_seeds > 1 else None
    point = np.full((len(levels), len(xs)), np.nan)
    boot = np.full((n_boot, len(levels), len(xs)), np.nan)
    for li, (lv, idx) in enumerate(zip(levels, resamples(levels, n_boot, rng))):
        n = len(lv.ids)
        for xi, x in enumerate(xs):
            if (arm, x) in lv.pruned and n:
                point[li, xi] = _relative(lv, (arm, x), None, None, measure)[0]
                boot[:, li, xi] = _relative(lv, (arm, x), idx, seed_pick, measure)
    return FamilyBoot(levels[0].model, levels[0].family, arm, levels, xs, point, boot)


def resamples(levels: list[Level], n_boot: int, rng) -> list[np.ndarray | None]:
    """Item indices [n_boot, n] of each level's bootstrap replicates. Levels of a paired family
    that hold the same item ids share one draw (mapped to each level's own order of ids), so
    a replicate keeps every item's results at all levels together; otherwise (and for a
    family whose levels hold different ids) each level is resampled on its own."""
    first = levels[0].ids if levels else []
    if (len(levels) > 1 and first and all(lv.paired for lv in levels)
            and all(len(lv.ids) == len(first) and set(lv.ids) == set(first) for lv in levels)):
        shared = rng.integers(0, len(first), size=(n_boot, len(first)))
        out = []
        for lv in levels:
            position = {item: k for k, item in enumerate(lv.ids)}
            out.append(np.array([position[item] for item in first])[shared])
        return out
    return [rng.integers(0, len(lv.ids), size=(n_boot, len(lv.ids))) if lv.ids else None
            for lv in levels]


# -- the analysis ----------------------------------------------------------------------------------


@dataclass
class Analysis:
    measure: str
    relative: list[dict]  # one row per model, arm, x, family, level
    monotonicity: list[dict]  # one row per model, arm, family, x
    verdicts: list[dict]  # one row per model, arm, family
    thresholds: list[dict]  # one row per model, arm, family, level
    dense: list[dict]  # one row per model, family, level
    sweeps: list[dict]  # `relative` rows of arms whose x is not an amount (e.g. band start)
    transfer: list[dict] = field(default_factory=list)  # % of Dense Transfer (study.transfer)
    recovery: list[dict] = field(default_factory=list)  # gap closed, freeze keeps


def analyse(points: list[dict], examples, *, records=None, item_measure: str = "task",
            n_boot: int = 1000, seed: int = 0, measure: str = "relative",
            thresholds=(0.9, 0.5)) -> Analysis:
    levels = collect(points, examples, records, item_measure)
    families: dict[tuple[str, str], list[Level]] = defaultdict(list)
    for lv in levels:
        families[(lv.model, lv.family)].append(lv)
    out = Analysis(measure, [], [], [], [], [], [])
    x_fields = {p["arm"]: p["x_field"] for p in points if p["method"] != "dense"}
    amount_arms = {p["arm"] for p in points if p["method"] != "dense" and p["x_is_amount"]}
    for (model, family), lvs in families.items():
        for lv in lvs:
            dv, dw = lv.dense
            out.dense.append({"model": model, "family": family, "task": lv.task,
                              "level": lv.level, "level_rank": lv.level_rank, "n": len(lv.ids),
                              "score": lv.metric.score(dv, dw) if len(lv.ids) else math.nan,
                              "chance": lv.chance, "at_chance": lv.dense_at_chance})
        arms = list(dict.fromkeys(a for lv in lvs for (a, _) in lv.pruned))
        for arm in arms:
            fb = bootstrap_family(lvs, arm, n_boot, seed, measure)
            _relative_rows(out, fb, x_fields.get(arm))
            if arm in amount_arms and any(x > 0 for x in fb.xs):  # not dense transfer alone
                _rank_rows(out, fb)
                _threshold_rows(out, fb, thresholds)
    out.sweeps = [r for r in out.relative if r["arm"] not in amount_arms]
    _decide(out.verdicts)
    from prunelab.study.transfer import analyse_transfer, transfer_settings

    settings = transfer_settings(points)
    if settings:
        out.transfer, out.recovery = analyse_transfer(levels, settings, n_boot=n_boot, seed=seed)
    return out


def _relative_rows(out: Analysis, fb: FamilyBoot, x_field: str | None) -> None:
    for li, lv in enumerate(fb.levels):
        for xi, x in enumerate(fb.xs):
            if math.isnan(fb.point[li, xi]) and (fb.arm, x) not in lv.pruned:
                continue
            low, high = percentile_ci(fb.boot[:, li, xi])
            seeds = lv.pruned.get((fb.arm, x), {})
            out.relative.append({
                "model": fb.model, "arm": fb.arm, "x": x, "x_field": x_field,
                "family": fb.family, "task": lv.task,
                "level": lv.level, "level_rank": lv.level_rank,
                "relative": float(fb.point[li, xi]), "ci_low": low, "ci_high": high,
                "n": len(lv.ids), "seeds": len(seeds), "dense_at_chance": lv.dense_at_chance})


def _valid(fb: FamilyBoot) -> list[int]:
    return [i for i, lv in enumerate(fb.levels) if not lv.dense_at_chance]


# With fewer levels a rank correlation takes so few values that its bootstrap interval
# collapses onto one of them: it is then shown without an interval.
MIN_LEVELS_FOR_RANK_CI = 4


def _rank_rows(out: Analysis, fb: FamilyBoot) -> None:
    """Per sparsity: slope of drop on level rank with its interval, and the rank correlations
    as description; pooled over the arm's sparsities: the verdict's statistics (its p-value is
    adjusted across the analysis afterwards, in `_decide`)."""
    valid = _valid(fb)
    excluded = [str(fb.levels[i].level) for i in range(len(fb.levels)) if i not in valid]
    base = {"model": fb.model, "arm": fb.arm, "family": fb.family,
            "levels_used": len(valid), "excluded_at_chance": excluded}
    nan2 = (math.nan, math.nan)
    empty = {"slope": math.nan, "slope_ci": nan2, "p": math.nan, "p_holm": math.nan,
             "spearman": math.nan, "spearman_ci": nan2, "effect": math.nan, "effect_ci": nan2,
             "reversals": []}
    if len(valid) < 2:
        out.verdicts.append({**base, **empty, "verdict": "too few levels above chance"})
        return
    ranks = np.array([fb.levels[i].level_rank for i in valid], float)
    drop_point = 1 - fb.point[valid, :]  # [L, X]
    drop_boot = 1 - fb.boot[:, valid, :]  # [B, L, X]
    usable = [xi for xi in range(len(fb.xs)) if np.isfinite(drop_point[:, xi]).all()]
    rank_ci = len(valid) >= MIN_LEVELS_FOR_RANK_CI
    items = min(len(fb.levels[i].ids) for i in valid)
    slope_boot_all, rho_all = [], []
    for xi in usable:
        finite = np.isfinite(drop_boot[:, :, xi]).all(axis=1)
        slope_b = trend.slopes(ranks, drop_boot[:, :, xi])
        slope_b[~finite] = np.nan
        slope_boot_all.append(slope_b)
        rho = float(spearman(ranks, drop_point[:, xi])[0])
        rho_all.append(rho)
        row = {**{k: base[k] for k in ("model", "arm", "family", "levels_used")},
               "x": fb.xs[xi],
               "slope": float(trend.slopes(ranks, drop_point[:, xi])),
               "slope_ci": percentile_ci(slope_b),
               "p": trend.bootstrap_p(float(trend.slopes(ranks, drop_point[:, xi])), slope_b,
                                      items),
               "spearman": rho, "kendall": float(kendall(ranks, drop_point[:, xi])[0]),
               "spearman_ci": nan2, "kendall_ci": nan2,
               "drops": [float(d) for d in drop_point[:, xi]]}
        if rank_ci:
            rho_b = spearman(ranks, np.nan_to_num(drop_boot[:, :, xi]))
            tau_b = kendall(ranks, np.nan_to_num(drop_boot[:, :, xi]))
            rho_b[~finite], tau_b[~finite] = np.nan, np.nan
            row["spearman_ci"], row["kendall_ci"] = percentile_ci(rho_b), percentile_ci(tau_b)
        out.monotonicity.append(row)
    if not usable:
        out.verdicts.append({**base, **empty, "verdict": "no usable sparsity"})
        return
    # Pooled over sparsities within each replicate (the same items resampled at every x):
    # the mean slope, and the effect = how much more of dense performance the hardest usable
    # level loses than the easiest, on average over the sparsities.
    with warnings.catch_warnings():  # a replicate with no finite slope stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        slope_boot = np.nanmean(np.stack(slope_boot_all), axis=0)
    slope = float(np.mean(trend.slopes(ranks, drop_point[:, usable].T)))
    hard, easy = -1, 0  # valid levels are ordered by level_rank
    effect_point = float(np.mean(drop_point[hard, usable] - drop_point[easy, usable]))
    effect_boot = np.mean(drop_boot[:, hard, usable] - drop_boot[:, easy, usable], axis=1)
    out.verdicts.append({
        **base, "verdict": None, "slope": slope, "slope_ci": percentile_ci(slope_boot),
        "p": trend.bootstrap_p(slope, slope_boot, items), "p_holm": math.nan,
        "spearman": float(np.mean(rho_all)), "spearman_ci": nan2,
        "effect": effect_point, "effect_ci": percentile_ci(effect_boot), "sparsities": len(usable),
        "reversals": [f"{fb.levels[valid[a]].level}→{fb.levels[valid[b]].level}"
                      for a, b in trend.adjacent_reversals(ranks, drop_boot[:, :, usable],
                                                           np.sign(slope))]})


def _decide(verdicts: list[dict], alpha: float = 0.05) -> None:
    """Holm-adjust the verdicts' p-values together, then name each verdict."""
    pending = [v for v in verdicts if v["verdict"] is None]
    for v, adjusted in zip(pending, trend.holm([v["p"] for v in pending])):
        v["p_holm"] = adjusted
        if adjusted < alpha and v["reversals"]:
            v["verdict"] = "not monotonic"
        elif adjusted < alpha:
            v["verdict"] = VERDICTS[0] if v["slope"] > 0 else VERDICTS[2]
        else:
            v["verdict"] = VERDICTS[1]
        # What "no evidence" can still rule out: an extra drop of the hardest level beyond
        # the effect interval's far end.
        v["effect_bound"] = float(max(abs(x) for x in v["effect_ci"])) if all(
            map(math.isfinite, v["effect_ci"])) else math.nan


def crossing(xs: list[float], rel: list[float], threshold: float) -> float | None:
    """First sparsity where relative performance falls below `threshold`, interpolated linearly
    from the last tested point above it (dense, at x = 0, counts as 1.0). None: never fell."""
    prev_x, prev_r = 0.0, 1.0
    for x, r in zip(xs, rel):
        if not math.isfinite(r):
            continue
        if r < threshold:
            if prev_r == r:
                return x
            return prev_x + (x - prev_x) * (prev_r - threshold) / (prev_r - r)
        prev_x, prev_r = x, r
    return None


def _threshold_rows(out: Analysis, fb: FamilyBoot, thresholds) -> None:
    for li, lv in enumerate(fb.levels):
        row = {"model": fb.model, "arm": fb.arm, "family": fb.family, "level": lv.level,
               "level_rank": lv.level_rank, "dense_at_chance": lv.dense_at_chance,
               "max_x": max(fb.xs) if fb.xs else None}
        for t in thresholds:
            row[f"below_{int(round(t * 100))}"] = crossing(fb.xs, list(fb.point[li]), t)
        out.thresholds.append(row)
