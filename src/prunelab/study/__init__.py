"""Studies: a recipe swept over models × compressions × tasks × seeds, resumable, analysed.

    from prunelab.report import build_report
    from prunelab.study import load_recipe, run_study
    outcome = run_study(load_recipe("recipes/demo.yaml"), "runs/demo")
    print(build_report(outcome.run_dir)["html"])
"""

from prunelab.study.processes import ProcessExecutor
from prunelab.study.recipe import Recipe, load_recipe, parse_recipe
from prunelab.study.runner import Outcome, dry_run, run_study

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run_study", "dry_run", "Outcome",
           "ProcessExecutor"]
