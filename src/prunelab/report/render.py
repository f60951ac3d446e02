"""The report of a study as self-contained HTML and as Markdown, rebuilt from the store.

HTML: images inline as base64 PNG, no scripts, no external links, every string that comes from
a model, a task or a recipe escaped. Markdown: the same tables, images as files beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field

from prunelab.study.results import Run
from prunelab.report.plots import relative_plots, sweep_plots
from prunelab.report.fmt import ci as _ci, num as _num, pct as _pct
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


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, png)
    pre: str | None = None


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


def _trained(share: float | None) -> str:
    """A share of parameters trained: small ones (PERP's biases and norms) keep two decimals."""
    return "–" if share is None else f"{share:.0%}" if share >= 0.995 else f"{share:.2%}"


def _pct_ci(pair) -> str:
    if pair is None or not all(math.isfinite(v) for v in pair):
        return "–"
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]"


def _by_x_field(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["x_field"] or "x", []).append(r)
    return out


def _contrast_section(run: Run) -> Section | None:
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


def sections(run: Run) -> list[Section]:
    a, recipe = run.analysis, run.recipe
    thresholds = recipe.analysis.thresholds
    out = []
    x_fields = {p["arm"]: p["x_field"] for p in run.points}

    def x_text(arm: str, x) -> str:
        """A sparsity as a percentage; bits removed per weight in bits."""
        if x_fields.get(arm) == "bits_removed_per_weight":
            return "–" if x is None or not math.isfinite(x) else f"{x:.2f} bits"
        return _pct(x)

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
    out.append(intro)

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
                                 for v in a.verdicts]))
    out.append(verdict)
    contrast = _contrast_section(run)
    if contrast is not None:
        out.append(contrast)

    plots = Section("Relative performance vs sparsity")
    plots.text.append("One line per difficulty level (darker = easier), shaded: 95% interval; "
                      "dashed grey: level at chance when dense; dotted: "
                      + ", ".join(f"{t:.0%}" for t in thresholds) + " of dense.")
    for model, png in relative_plots(a, tuple(thresholds)).items():
        plots.images.append((f"{model}: relative performance vs sparsity", png))
    out.append(plots)

    dense = Section("Dense model")
    dense.tables.append(Table("Dense scores", ["model", "family", "level", "n", "score",
                                               "chance", "at chance"],
                              [[d["model"], d["family"], str(d["level"]), str(d["n"]),
                                _num(d["score"]), _num(d["chance"]),
                                "yes" if d["at_chance"] else ""] for d in a.dense]))
    out.append(dense)

    mono = Section("Monotonicity per sparsity")
    mono.text.append("Rank correlations get an interval only with four or more levels: with "
                     "fewer they take so few values that the interval would collapse.")
    mono.tables.append(Table("Slope and rank correlation of level and drop", [
        "model", "method", "family", "sparsity", "slope", "95% CI", "p", "Spearman ρ",
        "95% CI", "Kendall τ", "95% CI", "drop per level (easy → hard)"],
        [[m["model"], m["arm"], m["family"], x_text(m["arm"], m["x"]), _num(m["slope"], 3),
          _ci(m["slope_ci"], 3), _p(m["p"]), _num(m["spearman"], 2), _ci(m["spearman_ci"]),
          _num(m["kendall"], 2), _ci(m["kendall_ci"]),
          " / ".join(_num(d, 2) for d in m["drops"])] for m in a.monotonicity]))
    out.append(mono)

    cross = Section("Where each level breaks")
    keys = [f"below_{int(round(t * 100))}" for t in thresholds]
    cross.text.append("Sparsity at which each level first falls below the given share of dense "
                      "(linear interpolation between tested sparsities; “>” = never within the "
                      "grid).")
    cross.tables.append(Table("Breaking points", ["model", "method", "family", "level"]
                              + [f"< {t:.0%} of dense" for t in thresholds],
                              [[t["model"], t["arm"], t["family"],
                                str(t["level"]) + (" (at chance)" if t["dense_at_chance"] else "")]
                               + [(x_text(t["arm"], t[k]) if t[k] is not None
                                   else f"> {x_text(t['arm'], t['max_x'])}")
                                  for k in keys] for t in a.thresholds]))
    out.append(cross)

    for x_field, rows in _by_x_field(a.sweeps).items():
        if x_field.endswith("options.band_low"):
            sweep = Section("Nested junk: pruning one magnitude band at a time")
            sweep.text.append("Only the weights whose |W| rank quantile lies in [s, s + width) "
                              "of each matrix are pruned (the arm names the width). If small "
                              "weights were pure junk, the low bands would cost nothing and "
                              "only high bands would hurt.")
            what, title = "band start (|W| rank quantile)", "Band probe"
        else:
            sweep = Section(f"Relative performance along {x_field}")
            what, title = x_field, f"Sweep of {x_field}"
        for model, png in sweep_plots(rows, what, a.measure).items():
            sweep.images.append((f"{model}: relative performance by {what}", png))
        sweep.tables.append(Table(title, ["model", "arm", "family", "level",
                                                          what, "relative", "95% CI"],
                                  [[r["model"], r["arm"], r["family"], str(r["level"]),
                                    _num(r["x"], 2), _num(r["relative"]),
                                    _ci((r["ci_low"], r["ci_high"]))] for r in rows]))
        out.append(sweep)

    if a.transfer:
        keys = {p["key"] for p in run.points}  # this recipe's points, not older copies
        trainings = {k: t for k, t in run.store.trainings().items() if k in keys}
        out.append(_transfer_section(a, trainings, _trained_shares(run)))

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
    out.append(comp)

    from prunelab.report.calibration import calibration_sections
    from prunelab.report.divergence import divergence_sections
    from prunelab.report.refusal import refusal_sections

    for extra in (divergence_sections(run) + calibration_sections(run)
                  + refusal_sections(run)):  # plain dicts
        out.append(Section(extra["title"], extra["text"],
                           [Table(*t) for t in extra["tables"]], extra["images"]))

    prov = Section("Recipe and versions")
    prov.text.append("Versions: " + ", ".join(f"{k} {v}" for k, v in
                                              run.record.get("versions", {}).items()))
    prov.pre = recipe.to_yaml()
    out.append(prov)
    return out


def _trained_shares(run) -> dict[tuple[str, str, float], float]:
    """(model, arm, x) -> the share of parameters its transfer stage trained (PERP's subsets
    and adapters train few; the four settings train every parameter they do not hold)."""
    out = {}
    for p in run.points:
        compression = run.compression_of(p)
        share = ((compression or {}).get("result") or {}).get("trainable_fraction")
        if share is not None:
            out[(p["model"], p["arm"], p["x"])] = share
    return out


def _transfer_section(a, trainings: dict[str, dict],
                      trained: dict[tuple[str, str, float], float]) -> Section:
    section = Section("Can fine-tuning bring it back?")
    section.text.append(
        "Each transfer setting's score as a share of Dense Transfer (the dense model fine-tuned "
        "the same way), per task level and sparsity, with 95% bootstrap intervals over items "
        "and seeds. sparse: pruned weights held at zero while fine-tuning; sparse-to-dense: "
        "pruned once, then all weights train and may regrow; freeze: the weights pruning "
        "would remove keep their pre-trained values, the rest train.")
    section.tables.append(Table("% of Dense Transfer", ["model", "task", "setting", "arm",
                                                        "sparsity", "parameters trained",
                                                        "of dense transfer", "95% CI"],
                                [[r["model"], r["task"], r["setting"], r["arm"], _pct(r["x"]),
                                  _trained(trained.get((r["model"], r["arm"], r["x"]))),
                                  _pct(r["of_dense_transfer"]),
                                  _pct_ci(r["ci"])]
                                 for r in a.transfer]))
    if a.recovery:
        section.text.append(
            "Irreversibility: the share of sparse transfer's loss that sparse-to-dense gives "
            "back ((s2d − sparse) / (1 − sparse), on shares of Dense Transfer; shown only where "
            "sparse transfer credibly lost something), and what freeze keeps.")
        section.tables.append(Table("Irreversibility", ["model", "task", "sparsity",
                                                        "gap closed by sparse-to-dense",
                                                        "95% CI", "freeze keeps", "95% CI"],
                                    [[r["model"], r["task"], _pct(r["x"]),
                                      _pct(r.get("gap_closed")),
                                      _pct_ci(r.get("gap_closed_ci")),
                                      _pct(r.get("freeze_keeps")),
                                      _pct_ci(r.get("freeze_keeps_ci"))]
                                     for r in a.recovery]))
    if trainings:  # the encoder track's per-level fine-tunings
        runs = list(trainings.values())
        held = [t for t in runs if t.get("setting") == "sparse"]
        text = (f"{len(runs)} fine-tunings of task levels, {sum(t['steps'] for t in runs):,} "
                f"steps in {sum(t['seconds'] for t in runs) / 60:.1f} min of training")
        if held:
            regrown = sum(t["masked_nonzero"] for t in held)
            total = sum(t["masked_weights"] for t in held)
            text += (f"; the {len(held)} sparse ones held {total:,} pruned weights in all, "
                     f"{regrown} of them nonzero at the end")
        section.text.append(text + ".")
    return section


# -- HTML -------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f3f3f3}
img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}figcaption{color:#555}"""


def to_html(title: str, secs: list[Section]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in secs:
        parts.append(f"<h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        for caption, png in s.images:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        for t in s.tables:
            parts.append(f"<h3>{e(t.title)}</h3><table><tr>"
                         + "".join(f"<th>{e(h)}</th>" for h in t.headers) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                      for row in t.rows]
            parts.append("</table>")
        if s.pre:
            parts.append(f"<pre>{e(s.pre)}</pre>")
    parts.append(f"<p><small>Written by prunelab on "
                 f"{e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</small></p></body></html>")
    return "\n".join(parts)


# -- Markdown ---------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    # Keep table structure intact whatever a task or model name contains.
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, secs: list[Section], image_dir: str) -> tuple[str, dict[str, bytes]]:
    lines, files = [f"# {title}", ""], {}
    for s in secs:
        lines += [f"## {s.title}", ""]
        for t in s.text:
            lines += [t, ""]
        for caption, png in s.images:
            name = f"fig{len(files) + 1}.png"
            files[name] = png
            lines += [f"![{_md_cell(caption)}]({image_dir}/{name})", ""]
        for t in s.tables:
            lines += [f"### {t.title}", "", "| " + " | ".join(map(_md_cell, t.headers)) + " |",
                      "|" + "---|" * len(t.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        if s.pre:
            lines += ["```yaml", s.pre.rstrip(), "```", ""]
    return "\n".join(lines), files


def summary_json(run: Run) -> dict:
    """The verdicts in machine-readable form (written beside the report)."""
    clean = _finite(json.loads(json.dumps(run.analysis.verdicts, default=str)))
    return {"recipe": run.recipe.name, "points": len(run.points),
            "total_points": run.total_points, "verdicts": clean}


def _finite(value):
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
