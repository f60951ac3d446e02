"""Which measure of a compressed model predicts its task loss: perplexity, or divergence from
the dense model (Khanal & Capone 2024: JSD tracks downstream damage that perplexity hides)?

Per model, across every compressed model of a study (each method, sparsity and seed), the
mean task drop is the mean over task levels of 1 − relative performance (the analysis'
measure; levels at chance when dense left out). Each candidate measure (perplexity, JSD,
KL both ways, top-1 agreement) is rank-correlated with it (Spearman's ρ; its sign says the
direction: top-1 agreement should correlate negatively), with a 95% percentile bootstrap over
compressed models. The best predictor is the measure with the largest |ρ|; `p_best` is the
share of bootstrap replicates (the same resample for every measure) in which it is the best.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np

from prunelab.evaluate.metrics import get_metric
from prunelab.study.stats import spearman

PREDICTORS = {  # name -> (label, how to read it from a compressions row)
    "perplexity": ("perplexity", lambda c: c.get("perplexity")),
    "jsd": ("JSD (nats)", lambda c: (c.get("divergence") or {}).get("jsd")),
    "kl_dense_compressed": ("KL(dense‖compressed)",
                            lambda c: (c.get("divergence") or {}).get("kl_dense_compressed")),
    "kl_compressed_dense": ("KL(compressed‖dense)",
                            lambda c: (c.get("divergence") or {}).get("kl_compressed_dense")),
    "top1_agreement": ("top-1 agreement",
                       lambda c: (c.get("divergence") or {}).get("top1_agreement")),
}
# Fewer compressed models than this give a rank correlation too coarse to read.
MIN_COMPRESSIONS = 4


def _canon(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def mean_drops(points: list[dict], measure: str = "relative",
               at_chance: set[tuple[str, str]] | None = None) -> dict[tuple[str, str], float]:
    """(model, compression config) -> mean task drop over its levels, from the stored scores.

    `at_chance`: (model, task) levels to leave out (the analysis' dense-at-chance flags)."""
    at_chance = at_chance or set()
    dense = {(p["model"], p["task"]): p for p in points if p["method"] == "dense"}
    drops: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in points:
        d = dense.get((p["model"], p["task"]))
        if (p["method"] == "dense" or d is None or (p["model"], p["task"]) in at_chance
                or p["score"] is None or d["score"] is None):
            continue
        pruned, base = np.array(p["score"], float), np.array(d["score"], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            if measure == "above_chance" and p["chance"] is not None and get_metric(
                    p["metric"]).chance_applies:
                rel = (pruned - p["chance"]) / (base - p["chance"])
            else:
                rel = get_metric(p["metric"]).relative(pruned, base)
        if np.isfinite(rel):
            drops[(p["model"], _canon(p["config"]["compression"]))].append(1.0 - float(rel))
    return {k: float(np.mean(v)) for k, v in drops.items()}


def predictor_table(points: list[dict], compressions: list[dict], measure: str = "relative",
                    at_chance: set[tuple[str, str]] | None = None, n_boot: int = 1000,
                    seed: int = 0) -> list[dict]:
    """One row per model and measure: ρ with the mean task drop, its interval, p_best."""
    drops = mean_drops(points, measure, at_chance)
    by_model: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for c in compressions:
        drop = drops.get((c["model"], _canon(c["config"])))
        if drop is not None:
            by_model[c["model"]].append((drop, c))
    rows = []
    for model, pairs in by_model.items():
        y = np.array([d for d, _ in pairs])
        values = {}
        for name, (_, read) in PREDICTORS.items():
            v = [read(c) for _, c in pairs]
            if all(x is not None and math.isfinite(x) for x in v):
                values[name] = np.array(v, float)
        if len(y) < MIN_COMPRESSIONS or not values:
            for name in values:
                rows.append({"model": model, "measure": name, "label": PREDICTORS[name][0],
                             "n": len(y), "rho": math.nan, "ci": (math.nan, math.nan),
                             "p_best": math.nan})
            continue
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        boot = {}
        for name, x in values.items():
            boot[name] = _rowwise_spearman(x[idx], y[idx])
        stacked = np.abs(np.stack([boot[n] for n in values]))  # [M, B]
        # Measures tied for the largest |ρ| in a replicate share its credit.
        top = stacked >= stacked.max(axis=0, keepdims=True) - 1e-12
        credit = top / top.sum(axis=0, keepdims=True)
        for k, (name, x) in enumerate(values.items()):
            rho = float(spearman(x, y[None, :])[0])
            low, high = np.quantile(boot[name], [0.025, 0.975])
            rows.append({"model": model, "measure": name, "label": PREDICTORS[name][0],
                         "n": len(y), "rho": rho, "ci": (float(low), float(high)),
                         "p_best": float(credit[k].mean())})
    return rows


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair of x, y [B, n]; 0 where a row is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=-1) / denom
    return np.where(denom > 0, rho, 0.0)


def best_predictor(rows: list[dict], model: str) -> dict | None:
    mine = [r for r in rows if r["model"] == model and math.isfinite(r["rho"])]
    return max(mine, key=lambda r: abs(r["rho"]), default=None)
