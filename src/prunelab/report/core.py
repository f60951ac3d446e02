"""The report's built-in sections, each registered at its place (`report.sections`): the
run, the verdicts, the plots and tables of the analysis, the compressed models, provenance.
The measures' sections sit beside them (divergence.py, refusal.py; calibration.py: the
effect of the calibration source), registered the same way."""

from __future__ import annotations

import math

from prunelab.report.fmt import ci as _ci, num as _num
from prunelab.report.plots import relative_plots, sweep_plots
from prunelab.report.sections import Section, Table, register_section
from prunelab.study.axis import axis_for
from prunelab.study.plan import describe_compression

MEASURES = {
    "relative": "relative performance = pruned score / dense score (the paper's “% of dense”)",
    "above_chance": "relative performance = (pruned − chance) / (dense − chance): the share of "
                    "the dense model's above-chance skill that survives",
}
ITEM_MEASURES = {
    "task": "each task's own metric (0/1 accuracy for multiple choice, the answer match for "
            "generation, bits per byte for text)",
    "continuous": "the probability of the gold choice normalised over the choices (multiple "
                  "choice), the gold answer's mean log-probability per token (generation; "
                  "relative = the ratio of per-token probabilities), bits per byte (text)",
}
AT_CHANCE = ("A level is at chance when the 95% interval of the dense model's mean margin of "
             "gold-choice probability over each item's chance (1/choices) reaches 0 (the "
             "continuous margin, whichever measure the verdicts use: a 0/1 count at a few tens "
             "of items flips with sampling noise); such levels are flagged and left out of "
             "every rank statistic.")


def _p(p) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _verdict_text(v: dict) -> str:
    text = v["verdict"]
    if text == "no evidence" and math.isfinite(v.get("effect_bound", math.nan)):
        text += f" (effect < {v['effect_bound']:.2f})"
    if text == "not monotonic":
        text += f" ({', '.join(v['reversals'])} reversed)"
    return text


def x_text(run, arm: str, x) -> str:
    """An arm's x value as its axis shows it (a sparsity as a percentage, bits in bits)."""
    fields = {p["arm"]: p["x_field"] for p in run.points}
    return axis_for(fields.get(arm)).format(x)


@register_section(order=10)
def run_intro(run) -> Section:
    a, recipe = run.analysis, run.recipe
    intro = Section("Run")
    done, total = len(run.points), run.total_points
    intro.text.append(f"Recipe “{recipe.name}”: {done} of {total} points finished"
                      + ("" if done >= total else " (a partial report: the study is not done)")
                      + f". Run directory: {run.run_dir}.")
    if recipe.description:
        intro.text.append(recipe.description)
    intro.text.append("Per item: " + ITEM_MEASURES[recipe.analysis.item_measure] + ".")
    intro.text.append("Measure: " + MEASURES[a.measure] + "; drop = 1 − relative performance. "
                      "Intervals are 95% percentile bootstraps over the items of each level "
                      "(dense and pruned paired) and over calibration seeds; where a family's "
                      "levels ask the same items in another guise (options, languages, "
                      "shots), an item is resampled at all its levels together. " + AT_CHANCE)
    for model, info in run.models.items():
        if info.get("dequantized"):
            intro.text.append(f"Caveat for {model}: {info.get('caveat') or 'dequantized weights'}."
                              " Results describe these weights, not the original checkpoint.")
    return intro


@register_section(order=20)
def verdicts(run) -> Section:
    verdict = Section("Does pruning hurt harder tasks first?")
    verdict.text.append("Per family and method: the slope of the drop on the difficulty level "
                        "(extra drop per level), pooled over the sparsities tested, with its "
                        "95% bootstrap interval and a p-value of “no ordering”, Holm-adjusted "
                        "across every verdict of this report. “harder drops more” or "
                        "“opposite” when the adjusted p is below 0.05 and no neighbouring pair "
                        "of levels is credibly reversed (else “not monotonic”). Effect: how "
                        "much more of dense performance the hardest level loses than the "
                        "easiest; under “no evidence”, the data rule out an effect beyond the "
                        "interval's far end. ρ: Spearman's rank correlation, descriptive.")
    verdict.tables.append(Table("Verdicts", ["model", "method", "family", "verdict", "slope",
                                             "95% CI", "p (Holm)", "effect", "95% CI",
                                             "mean ρ", "levels used", "excluded (at chance)"],
                                [[v["model"], v["arm"], v["family"], _verdict_text(v),
                                  _num(v["slope"], 3), _ci(v["slope_ci"], 3), _p(v["p_holm"]),
                                  _num(v["effect"], 3), _ci(v["effect_ci"], 3),
                                  _num(v["spearman"], 2), str(v["levels_used"]),
                                  ", ".join(v["excluded_at_chance"]) or "–"]
                                 for v in run.analysis.verdicts]))
    return verdict


@register_section(order=30)
def contrast(run) -> Section | None:
    """Pruning against quantization on one axis (bits removed per weight), when the recipe
    has both (recipes/prune-vs-quant.yaml)."""
    from prunelab.report.plots import kind_overlay_plots
    from prunelab.study.axis import BITS_REMOVED
    from prunelab.study.contrast import KINDS, arm_kinds, ordering_by_kind

    kinds = arm_kinds(run.points)
    if {"pruning", "quantization"} - set(kinds.values()):
        return None
    a = run.analysis
    section = Section("Pruning against quantization")
    section.text.append("Per family: does the difficulty ordering (“harder drops more”, from "
                        "the verdicts above) hold for pruning, for quantization, both or "
                        "neither? It holds for a kind when at least one of its arms has that "
                        "verdict; each arm's verdict, slope and Holm-adjusted p are listed.")
    rows = ordering_by_kind(a.verdicts, kinds)
    section.tables.append(Table("Ordering by kind of compression",
                                ["model", "family", "ordering holds for", *KINDS],
                                [[r["model"], r["family"], r["answer"],
                                  *[r[k] or "–" for k in KINDS]] for r in rows]))
    axis_rows = [r for r in a.relative if r["x_field"] == BITS_REMOVED]
    if axis_rows:
        section.text.append("Overlay: relative performance of each level against bits removed "
                            "per weight (16 − stored bits per weight; see "
                            "prunelab/study/axis.py), pruning arms solid, quantization arms "
                            "dashed, both dotted.")
        for model, png in kind_overlay_plots(axis_rows, kinds, a.measure).items():
            section.images.append((f"{model}: pruning and quantization on one axis", png))
    return section


@register_section(order=40)
def relative_performance(run) -> Section:
    thresholds = run.recipe.analysis.thresholds
    plots = Section("Relative performance vs sparsity")
    plots.text.append("One line per difficulty level (darker = easier), shaded: 95% interval; "
                      "dashed grey: level at chance when dense; dotted: "
                      + ", ".join(f"{t:.0%}" for t in thresholds) + " of dense.")
    for model, png in relative_plots(run.analysis, tuple(thresholds)).items():
        plots.images.append((f"{model}: relative performance vs sparsity", png))
    return plots


@register_section(order=50)
def dense_scores(run) -> Section:
    dense = Section("Dense model")
    dense.tables.append(Table("Dense scores", ["model", "family", "level", "n", "score",
                                               "chance", "at chance"],
                              [[d["model"], d["family"], str(d["level"]), str(d["n"]),
                                _num(d["score"]), _num(d["chance"]),
                                "yes" if d["at_chance"] else ""] for d in run.analysis.dense]))
    return dense


@register_section(order=60)
def monotonicity(run) -> Section:
    mono = Section("Monotonicity per sparsity")
    mono.text.append("Rank correlations get an interval only with four or more levels: with "
                     "fewer they take so few values that the interval would collapse.")
    mono.tables.append(Table("Slope and rank correlation of level and drop", [
        "model", "method", "family", "sparsity", "slope", "95% CI", "p", "Spearman ρ",
        "95% CI", "Kendall τ", "95% CI", "drop per level (easy → hard)"],
        [[m["model"], m["arm"], m["family"], x_text(run, m["arm"], m["x"]),
          _num(m["slope"], 3), _ci(m["slope_ci"], 3), _p(m["p"]), _num(m["spearman"], 2),
          _ci(m["spearman_ci"]), _num(m["kendall"], 2), _ci(m["kendall_ci"]),
          " / ".join(_num(d, 2) for d in m["drops"])] for m in run.analysis.monotonicity]))
    return mono


@register_section(order=70)
def breaking_points(run) -> Section:
    thresholds = run.recipe.analysis.thresholds
    cross = Section("Where each level breaks")
    keys = [f"below_{int(round(t * 100))}" for t in thresholds]
    cross.text.append("Sparsity at which each level first falls below the given share of dense "
                      "(linear interpolation between tested sparsities; “>” = never within the "
                      "grid).")
    cross.tables.append(Table("Breaking points", ["model", "method", "family", "level"]
                              + [f"< {t:.0%} of dense" for t in thresholds],
                              [[t["model"], t["arm"], t["family"],
                                str(t["level"]) + (" (at chance)" if t["dense_at_chance"] else "")]
                               + [(x_text(run, t["arm"], t[k]) if t[k] is not None
                                   else f"> {x_text(run, t['arm'], t['max_x'])}")
                                  for k in keys] for t in run.analysis.thresholds]))
    return cross


@register_section(order=80)
def sweeps(run) -> list[Section]:
    """One section per swept field that is not an amount (a band's start, a sample count),
    titled and explained by its registered axis."""
    by_field: dict[str, list[dict]] = {}
    for r in run.analysis.sweeps:
        by_field.setdefault(r["x_field"] or "x", []).append(r)
    out = []
    for x_field, rows in by_field.items():
        axis = axis_for(x_field)
        what = axis.what(x_field)
        sweep = Section(axis.title(x_field))
        if axis.section_text:
            sweep.text.append(axis.section_text)
        for model, png in sweep_plots(rows, what, run.analysis.measure).items():
            sweep.images.append((f"{model}: relative performance by {what}", png))
        sweep.tables.append(Table(axis.table(x_field), ["model", "arm", "family", "level",
                                                        what, "relative", "95% CI"],
                                  [[r["model"], r["arm"], r["family"], str(r["level"]),
                                    _num(r["x"], 2), _num(r["relative"]),
                                    _ci((r["ci_low"], r["ci_high"]))] for r in rows]))
        out.append(sweep)
    return out


@register_section(order=90)
def transfer(run) -> Section | None:
    from prunelab.report.transfer import transfer_section

    return transfer_section(run)


@register_section(order=100)
def compressed_models(run) -> Section:
    comp = Section("Compressed models")
    rows = []
    for c in run.compressions:
        cfg, res = c["config"], c["result"] or {}
        seed = "–" if cfg.get("seed") is None else str(cfg["seed"])
        rows.append([c["model"], describe_compression(cfg), seed,
                     _num(res.get("overall_sparsity"), 4), _num(c["perplexity"], 2),
                     _num(c["seconds"], 1)])
    comp.tables.append(Table("Compressions", ["model", "stages", "seed", "achieved sparsity",
                                              "perplexity", "compress s"], rows))
    return comp


@register_section(order=200)
def provenance(run) -> Section:
    prov = Section("Recipe and versions")
    prov.text.append("Versions: " + ", ".join(f"{k} {v}" for k, v in
                                              run.record.get("versions", {}).items()))
    prov.pre = run.recipe.to_yaml()
    return prov
