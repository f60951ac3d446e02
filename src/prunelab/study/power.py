"""Power analysis for a dry run: per model and task family, the smallest extra drop of the
hardest level over the easiest that the recipe's item count detects (`trend`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunelab.study.plan import TaskInfo
from prunelab.study.store import STORE_FILE, Store

# What a recipe should be able to see: an extra drop of the hardest level over the easiest of
# this size or larger, with 80% power; a dry run warns about families that cannot.
DETECTABLE_AIM = 0.15
# The sparsity at which power is computed: one where a fifth of the dense score is lost,
# the middle of the range a pooled verdict spans.
POWER_AT_KEPT = 0.8


def power(study, run_dir: str | Path | None = None) -> list[dict]:
    """Per model and family: the smallest extra drop of its hardest level over its easiest
    that the recipe's item count detects with 80% power (`trend.detectable_effect`), at a
    sparsity where a share POWER_AT_KEPT of the dense score survives.

    The pilot is a finished dense point of each level in `run_dir` (run the recipe with the
    dense model only, or point at any earlier run). Levels scored 0/1 need only its scores
    (without a pilot, 0.5 is assumed); the continuous measure, and tasks whose own metric is
    continuous (bits per byte, F1), need its per-item values, their spread and, for a family
    whose levels ask the same items, their correlation across levels
    (`trend.continuous_covariance`); without a pilot they get no estimate."""
    from prunelab.study import trend
    from prunelab.study.stats import collect

    measure = study.recipe.analysis.item_measure
    pilot: dict[tuple[str, str], Any] = {}
    if run_dir is not None and (Path(run_dir) / STORE_FILE).is_file():
        with Store.in_dir(run_dir) as store:
            dense = [p for p in store.points() if p["method"] == "dense"]
            pilot = {(lv.model, lv.task): lv for lv in
                     collect(dense, store.examples, store.example_records, measure)}
    rows = []
    for unit in study.units:
        if not unit.compression.is_dense:
            continue
        families: dict[str, list[TaskInfo]] = {}
        for task in unit.tasks:
            families.setdefault(task.family, []).append(task)
        for family, tasks in families.items():
            if len({t.level_rank for t in tasks}) < 2:
                continue
            tasks = sorted(tasks, key=lambda t: t.level_rank)
            limit = study.recipe.eval.limit
            items = [min(limit, t.size) if limit and t.size else (t.size or limit or 100)
                     for t in tasks]
            levels = [pilot.get((unit.model, t.name)) for t in tasks]
            row = {"model": unit.model, "family": family, "levels": len(tasks),
                   "items": min(items)}
            ranks = [t.level_rank for t in tasks]
            if measure == "task" and all(lv is None or lv.metric.binary
                                         for lv in levels) and tasks[0].kind != "rolling":
                scores = [None if lv is None else lv.metric.score(*lv.dense) for lv in levels]
                row["dense"] = ("assumed 0.5" if None in scores else
                                " / ".join(f"{s:.2f}" for s in scores))
                covariance = trend.binary_covariance(
                    [(n, 0.5 if s is None else s) for n, s in zip(items, scores)], POWER_AT_KEPT)
            elif any(lv is None for lv in levels):
                rows.append({**row, "dense": "needs a dense pilot", "min_effect": None,
                             "ok": None})
                continue
            else:
                row["dense"] = " / ".join(f"{lv.metric.score(*lv.dense):.2f}" for lv in levels)
                paired, values = _pilot_values(levels, all(t.paired for t in tasks))
                covariance = trend.continuous_covariance(levels[0].metric, values, items,
                                                         paired=paired, kept=POWER_AT_KEPT)
            mde = float(trend.detectable_effect(ranks, covariance))
            rows.append({**row, "min_effect": round(mde, 3), "ok": bool(mde <= DETECTABLE_AIM)})
    return rows


def _pilot_values(levels, paired: bool) -> tuple[bool, list[tuple]]:
    """Each pilot level's (values, weights); for a paired family, restricted to the items
    every level holds and aligned item by item (unpaired when fewer than two are shared)."""
    if paired:
        shared = set(levels[0].ids).intersection(*(lv.ids for lv in levels[1:]))
        if len(shared) >= 2:
            order = [i for i in levels[0].ids if i in shared]
            out = []
            for lv in levels:
                position = {item: k for k, item in enumerate(lv.ids)}
                pick = np.array([position[i] for i in order])
                out.append((lv.dense[0][pick], lv.dense[1][pick]))
            return True, out
    return False, [lv.dense for lv in levels]
