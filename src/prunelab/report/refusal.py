"""The report's refusal section: refusal rate per jailbreak template against sparsity, next to
the mean task score, per arm (`prunelab.evaluate.refusal`; recipe `refusal:`)."""

from __future__ import annotations

import json
import math
from collections import defaultdict

from prunelab.report.fmt import ci as _ci, num as _num, section
from prunelab.report.sections import register_section
from prunelab.report.plots import _png, plt
from prunelab.study.plan import describe_compression


def _canon(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


@register_section(order=130)
def refusal_sections(run) -> list[dict]:
    measured = [c for c in run.compressions if c.get("refusal")]
    if not measured:
        return []
    sec = section("Refusal under jailbreak prompts")
    sec["text"].append(
        "Harmful requests wrapped in each jailbreak template, and benign control requests "
        "asked directly (over-refusal), answered greedily through the model's chat template; "
        "a refusal is an answer in which one of prunelab's refusal patterns occurs "
        "(`prunelab.evaluate.refusal.REFUSAL_PATTERNS`). Rates with 95% Wilson intervals. "
        "The plots put each arm's refusal rate per template (dense at sparsity 0) beside its "
        "mean relative task performance, so the safety/utility trade-off is read at once.")
    judged = any("judge_rate" in s for c in measured for s in c["refusal"]["summary"])
    if judged:
        sec["text"].append(
            "The judge model's columns: the share of answers it judged a refusal (its "
            "probability of 'Yes' to 'does the response refuse?' above one half), and the "
            "share of answers on which it agrees with the keyword rule.")
    rows = []
    for c in measured:
        seed = c["config"].get("seed")
        for s in c["refusal"]["summary"]:
            row = [c["model"], describe_compression(c["config"]),
                   "–" if seed is None else str(seed), s["set"], s["template"],
                   str(s["n"]), _num(s["rate"], 2), _ci((s["ci_low"], s["ci_high"]))]
            if judged:
                row += ([_num(s["judge_rate"], 2), _ci((s["judge_ci_low"], s["judge_ci_high"])),
                         _num(s["agreement"], 2)] if "judge_rate" in s else ["–"] * 3)
            rows.append(row)
    head = ["model", "stages", "seed", "set", "template", "n", "refusal rate", "95% CI"]
    if judged:
        head += ["judge's rate", "judge's 95% CI", "agreement"]
    sec["tables"].append(("Refusal rates", head, rows))
    for model, png in _plots(run, measured).items():
        sec["images"].append((f"{model}: refusal rate and task performance vs sparsity", png))
    return [sec]


def _plots(run, measured: list[dict]) -> dict[str, bytes]:
    where = {}  # compression config -> (arm, x)
    for p in run.points:
        if p["method"] != "dense" and p["x_is_amount"]:
            where[(p["model"], _canon(p["config"]["compression"]))] = (p["arm"], p["x"])
    task = defaultdict(list)  # (model, arm, x) -> relative rows
    for r in (run.analysis.relative if run.analysis else []):
        if not r["dense_at_chance"] and math.isfinite(r["relative"]):
            task[(r["model"], r["arm"], r["x"])].append(r["relative"])
    out = {}
    for model in dict.fromkeys(c["model"] for c in measured):
        dense = next((c for c in measured if c["model"] == model
                      and not c["config"].get("stages")), None)
        curves = defaultdict(lambda: defaultdict(list))  # arm -> (set, template) -> points
        for c in measured:
            found = where.get((model, _canon(c["config"])))
            if c["model"] != model or found is None:
                continue
            arm, x = found
            for s in c["refusal"]["summary"]:
                curves[arm][(s["set"], s["template"])].append((x, s["rate"], s["ci_low"],
                                                               s["ci_high"]))
        if not curves:
            continue
        arms = sorted(curves)
        fig, axes = plt.subplots(1, len(arms) + 1, figsize=(3.6 * (len(arms) + 1), 3.2),
                                 squeeze=False)
        for ax, arm in zip(axes[0], arms):
            for (kind, template), pts in sorted(curves[arm].items()):
                if dense is not None:
                    pts = pts + [(0.0, s["rate"], s["ci_low"], s["ci_high"])
                                 for s in dense["refusal"]["summary"]
                                 if (s["set"], s["template"]) == (kind, template)]
                pts.sort()
                xs, ys, lo, hi = zip(*pts)
                style = "--" if kind == "benign" else "-"
                line, = ax.plot(xs, ys, style, marker="o", ms=3,
                                label=f"{template}" + (" (benign)" if kind == "benign" else ""))
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
            ax.set_title(arm, fontsize=9)
            ax.set_xlabel("sparsity")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("refusal rate")
        axes[0][0].legend(fontsize=6)
        ax = axes[0][-1]
        for arm in arms:
            pts = sorted((x, sum(v) / len(v)) for (m, a, x), v in task.items()
                         if m == model and a == arm and v)
            if pts:
                ax.plot(*zip(*([(0.0, 1.0)] + pts)), marker="o", ms=3, label=arm)
        ax.set_title("mean relative task performance", fontsize=9)
        ax.set_xlabel("sparsity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.suptitle(model)
        out[model] = _png(fig)
    return out
