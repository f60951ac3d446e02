"""The report's calibration section: the effect of each calibration source against the
reference source, per task family and method (`prunelab.study.calibration_effect`)."""

from __future__ import annotations

from prunelab.report.fmt import ci as _ci, num as _num, pct as _pct, section
from prunelab.report.sections import register_section
from prunelab.study.calibration_effect import calibration_effects


@register_section(order=120)
def calibration_sections(run) -> list[dict]:
    a = run.recipe.analysis
    rows = calibration_effects(run.points, run.store.examples, run.store.example_records,
                               item_measure=a.item_measure, measure=a.measure, n_boot=a.n_boot,
                               default_source=run.recipe.calibration.source)
    if not rows:
        return []
    sec = section("Calibration source: effect per family and method")
    sec["text"].append(
        "Arms that differ only in their calibration source, compared at each sparsity: the "
        "mean over a family's levels of relative performance with the source, minus the same "
        "with the reference source (the recipe's calibration.source), with a 95% paired "
        "bootstrap interval over items (levels at chance when dense left out). Positive: the "
        "source keeps more of the dense score. `task:FAMILY` is that family's own prompts, "
        "from items the evaluation does not use.")
    sec["tables"].append(("Effect of the calibration source", [
        "model", "method", "arm", "family", "sparsity", "source", "reference", "levels",
        "effect", "95% CI"],
        [[r["model"], r["method"], r["arm"], r["family"], _pct(r["x"]), r["source"],
          r["reference"], str(r["levels"]), _num(r["effect"], 3), _ci(r["ci"], 3)]
         for r in rows]))
    return [sec]
