"""The report's divergence sections: each compressed model's divergence from the dense model,
and which measure (perplexity, JSD, KL, top-1 agreement) predicts the task drop best."""

from __future__ import annotations

import json
import math
from collections import defaultdict

from prunelab.report.plots import _png, plt
from prunelab.report.fmt import ci as _ci, num as _num, section
from prunelab.report.sections import register_section
from prunelab.study.plan import describe_compression
from prunelab.study.predictors import (MIN_COMPRESSIONS, PREDICTORS, best_predictor, mean_drops,
                                       predictor_table)


def _canon(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


@register_section(order=110)
def divergence_sections(run) -> list[dict]:
    measured = [c for c in run.compressions if c.get("divergence")]
    if not measured:  # (a recipe without `divergence:` keeps the report it always had)
        return []
    a = run.analysis
    at_chance = {(d["model"], d["task"]) for d in (a.dense if a else []) if d["at_chance"]}
    measure = a.measure if a else "relative"
    drops = mean_drops(run.points, measure, at_chance)
    out = []
    sec = section("Divergence from the dense model")
    sec["text"].append("Per predicted token of the divergence text (the recipe's "
                    "`divergence:` windows), the compressed model's next-token distribution "
                    "against the dense model's: Jensen-Shannon divergence in nats (at most "
                    "ln 2 ≈ 0.693), KL both ways, and whether both put the same token first. "
                    "Means over tokens; the median and 95th percentile describe the spread "
                    "of the per-token JSD. Mean task drop: 1 − relative performance, "
                    "averaged over the task levels (levels at chance when dense left out).")
    rows = []
    for c in measured:
        d, seed = c["divergence"], c["config"].get("seed")
        q = d.get("jsd_quantiles") or {}
        rows.append([c["model"], describe_compression(c["config"]),
                     "–" if seed is None else str(seed), _num(c.get("perplexity"), 2),
                     _num(d.get("jsd"), 4), _num(q.get("q50"), 4), _num(q.get("q95"), 4),
                     _num(d.get("kl_dense_compressed"), 4),
                     _num(d.get("kl_compressed_dense"), 4),
                     _num(d.get("top1_agreement"), 3),
                     _num(drops.get((c["model"], _canon(c["config"]))), 3)])
    sec["tables"].append(("Divergence per compressed model", [
        "model", "stages", "seed", "perplexity", "JSD", "JSD median", "JSD 95th pct",
        "KL(dense‖compr.)", "KL(compr.‖dense)", "top-1 agreement", "mean task drop"], rows))
    out.append(sec)
    table = predictor_table(run.points, run.compressions, measure, at_chance,
                            n_boot=run.recipe.analysis.n_boot)
    sec = section("Which measure predicts task loss?")
    sec["text"].append(
        "Across the compressed models of each model (every method, sparsity and seed), "
        "Spearman's ρ of each measure with the mean task drop, with a 95% bootstrap interval "
        "over compressed models. Perplexity, JSD and KL should rise with the drop (ρ > 0), "
        "top-1 agreement fall (ρ < 0); the best predictor has the largest |ρ|. P(best): the "
        "share of bootstrap replicates (one resample for all measures) in which a measure has "
        f"the largest |ρ|. Needs at least {MIN_COMPRESSIONS} compressed models.")
    for model in dict.fromkeys(r["model"] for r in table):
        best = best_predictor(table, model)
        if best is not None:
            tied = [r["label"] for r in table if r["model"] == model and r is not best
                    and abs(abs(r["rho"]) - abs(best["rho"])) < 1e-9]
            sec["text"].append(f"{model}: the best predictor is {best['label']} "
                            f"(ρ = {best['rho']:.2f}, P(best) = {best['p_best']:.2f})"
                            + (f", tied with {', '.join(tied)}" if tied else "") + ".")
    sec["tables"].append(("Rank correlation with the mean task drop", [
        "model", "measure", "compressed models", "Spearman ρ", "95% CI", "P(best)"],
        [[r["model"], r["label"], str(r["n"]), _num(r["rho"], 2), _ci(r["ci"]),
          _num(r["p_best"], 2)] for r in table]))
    for model, png in _scatter(run.compressions, drops).items():
        sec["images"].append((f"{model}: mean task drop against each measure", png))
    out.append(sec)
    return out


def _scatter(compressions: list[dict], drops: dict) -> dict[str, bytes]:
    """Per model: one panel per measure, a dot per compressed model, coloured by method."""
    by_model: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for c in compressions:
        drop = drops.get((c["model"], _canon(c["config"])))
        if drop is not None and c["config"].get("stages"):
            by_model[c["model"]].append((drop, c))
    out = {}
    for model, pairs in by_model.items():
        names = [n for n, (_, read) in PREDICTORS.items()
                 if any(read(c) is not None for _, c in pairs)]
        if not names:
            continue
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        methods = sorted({c["config"]["stages"][0].get("method", "?") for _, c in pairs})
        colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
        for ax, name in zip(axes[0], names):
            read = PREDICTORS[name][1]
            for method in methods:
                pts = [(read(c), d) for d, c in pairs
                       if c["config"]["stages"][0].get("method") == method
                       and read(c) is not None and math.isfinite(read(c))]
                if pts:
                    ax.scatter(*zip(*pts), s=18, color=colours[method], label=method)
            ax.set_xlabel(PREDICTORS[name][0])
            if name == "perplexity":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mean task drop")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(model)
        out[model] = _png(fig)
    return out
