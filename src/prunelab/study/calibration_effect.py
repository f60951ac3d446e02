"""The effect of the calibration source, per task family and method, with intervals.

A recipe that sweeps `calibration.source` (general text, another domain, `task:FAMILY`: a
task's own held-out prompts) makes one arm per source. Arms that differ only in their source
form a group; within a group, the effect of a source at each x (sparsity) and family is

    mean over the family's levels of relative performance with that source
  − the same with the reference source (the recipe's `calibration.source` when the group has
    it, else the first source in sorted order),

with a 95% percentile bootstrap interval. Both arms are evaluated on the same items, so each
replicate resamples every level's items once and uses the draw for both (paired); levels at
chance when dense are left out. A positive effect: the source keeps more of the dense score.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from prunelab import defaults
from prunelab.study.stats import _relative, collect, resamples
from prunelab.study.trend import percentile_ci


def _source(stage: dict, default: str) -> str:
    return ((stage.get("calibration") or {}).get("source")) or default


def _group_key(stages: list[dict]) -> str:
    """The chain with the first stage's calibration source and its sparsity (the x) blanked."""
    data = [{k: v for k, v in s.items() if k != "calibration_resolved"}
            for s in json.loads(json.dumps(stages))]
    if data:
        calibration = dict(data[0].get("calibration") or {})
        calibration.pop("source", None)
        data[0]["calibration"] = calibration or None
        data[0]["sparsity"] = None
    return json.dumps(data, sort_keys=True)


def calibration_effects(points: list[dict], examples, records=None, *,
                        item_measure: str = "task", measure: str = "relative",
                        n_boot: int = 1000, seed: int = 0,
                        default_source: str = defaults.CALIBRATION_SOURCE) -> list[dict]:
    """One row per model, group, family, x and non-reference source (see the docstring)."""
    arms: dict[str, dict] = {}  # arm -> {"stages", "source", "group"}
    for p in points:
        if p["method"] == "dense" or p["arm"] in arms or not p["stages"]:
            continue
        arms[p["arm"]] = {"source": _source(p["stages"][0], default_source),
                          "group": _group_key(p["stages"]), "method": p["method"]}
    groups: dict[str, dict[str, str]] = defaultdict(dict)  # group -> source -> arm
    for arm, info in arms.items():
        groups[info["group"]].setdefault(info["source"], arm)
    groups = {g: s for g, s in groups.items() if len(s) > 1}
    if not groups:
        return []
    levels = collect(points, examples, records, item_measure)
    families: dict[tuple[str, str], list] = defaultdict(list)
    for lv in levels:
        if not lv.dense_at_chance and lv.ids:
            families[(lv.model, lv.family)].append(lv)
    rng = np.random.default_rng(seed)
    rows = []
    for (model, family), lvs in families.items():
        draws = resamples(lvs, n_boot, rng)
        for group, by_source in groups.items():
            reference = default_source if default_source in by_source else sorted(by_source)[0]
            ref_arm = by_source[reference]
            xs = sorted({x for lv in lvs for (a, x) in lv.pruned if a == ref_arm})
            for source, arm in sorted(by_source.items()):
                if source == reference:
                    continue
                for x in xs:
                    both = [(lv, idx) for lv, idx in zip(lvs, draws)
                            if (arm, x) in lv.pruned and (ref_arm, x) in lv.pruned]
                    if not both:
                        continue
                    point = np.mean([_relative(lv, (arm, x), None, None, measure)[0]
                                     - _relative(lv, (ref_arm, x), None, None, measure)[0]
                                     for lv, _ in both])
                    boot = np.mean([_relative(lv, (arm, x), idx, None, measure)
                                    - _relative(lv, (ref_arm, x), idx, None, measure)
                                    for lv, idx in both], axis=0)
                    low, high = percentile_ci(boot)
                    rows.append({"model": model, "family": family,
                                 "method": arms[arm]["method"], "arm": arm,
                                 "reference_arm": ref_arm, "source": source,
                                 "reference": reference, "x": x, "levels": len(both),
                                 "effect": float(point), "ci": (float(low), float(high))})
    return sorted(rows, key=lambda r: (r["model"], r["method"], r["arm"], r["family"], r["x"]))
