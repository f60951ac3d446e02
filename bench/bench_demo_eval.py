"""Where the demo's evaluation time goes, and what scoring its levels together saves.

Loads smollm2-135m once and scores the demo recipe's task levels two ways, in turn within
each repeat so that both see the same machine load: each level on its own (`evaluate` per
level, as studies did before 2026-12-07), and all levels of one model in one pass through a
`ScoreCache` (`score_together`, what a study does now: nested option sets share one packed
row per prompt, batches fill across levels). Prints per level the tokens it scores and its
time alone, then the two totals and their ratio.

    OMP_NUM_THREADS=2 python bench/bench_demo_eval.py [--limit 100] [--repeats 2] [--recipe recipes/demo.yaml]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=HERE.parent / "recipes" / "demo.yaml")
    parser.add_argument("--limit", type=int, default=None, help="items per level (default: the recipe's)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    from prunelab.evaluate.runner import _rolling_groups, evaluate, plan_task, score_together
    from prunelab.evaluate.scoring import ScoreCache
    from prunelab.study.recipe import load_recipe
    from prunelab.tasks.registry import get_tasks
    from prunelab.zoo.models import load_model

    recipe = load_recipe(args.recipe)
    limit = args.limit or recipe.eval.limit
    loaded = load_model(recipe.models[0])
    levels = [t.name for t in get_tasks(list(recipe.tasks))]
    batch = recipe.eval.batch_size
    evaluate(loaded, levels[0], limit=5, progress=False)  # warm-up
    print(f"{loaded.name}, {len(levels)} levels x {limit} items, batch {batch}")
    alone_runs, together_runs, per_level = [], [], {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        for name in levels:
            t = time.perf_counter()
            evaluate(loaded, name, limit=limit, progress=False, batch_size=batch)
            per_level.setdefault(name, []).append(time.perf_counter() - t)
        alone_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        score_together(loaded, [(name, limit) for name in levels], scores=ScoreCache(),
                       batch_size=batch)
        together_runs.append(time.perf_counter() - start)
    for name in levels:
        plan = plan_task(loaded, get_tasks([name])[0], limit, 0)
        groups = plan.groups or _rolling_groups(plan)
        tokens = sum(g.packed_length for g in groups if g is not None)
        print(f"  {name:22s} {tokens:6d} tokens  {min(per_level[name]):6.1f} s alone")
    alone, together = min(alone_runs), min(together_runs)
    print(f"levels one by one: {alone:.1f} s")
    print(f"levels together:   {together:.1f} s")
    print(f"together / one by one: {together / alone:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
