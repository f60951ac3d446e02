"""Overhead of the study machinery itself (no model): store writes, analysis, report.

    .venv/bin/python bench/bench_study.py

Runs the fake backend over a grid the size of the full demo with 200 items per level and
prints how long each stage takes, so the bookkeeping can be compared with model time
(a 135M-parameter model needs ~1 s per 512-token forward on 2 cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prunelab.report import build_report
from prunelab.study.results import load_run
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.testing import FakeBackend


def main() -> None:
    recipe = parse_recipe({
        "name": "bench", "models": ["m"], "tasks": ["digits", "flat", "reverse", "objects"],
        "compressions": [{"method": m, "sparsity": [0.1 * i for i in range(1, 10)]}
                         for m in ("magnitude", "wanda", "sparsegpt")],
        "band_probe": {"starts": [0.1 * i for i in range(10)]},
        "eval": {"limit": 200}, "analysis": {"n_boot": 1000}})
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        out = run_study(recipe, run_dir, backend=FakeBackend(size=200), progress=False)
        stored = time.perf_counter() - start
        n_examples = out.points_total * 200
        start = time.perf_counter()
        run_study(recipe, run_dir, backend=FakeBackend(size=200), progress=False)
        resumed = time.perf_counter() - start
        start = time.perf_counter()
        run = load_run(run_dir)
        run.store.close()
        analysed = time.perf_counter() - start
        start = time.perf_counter()
        build_report(run_dir)
        reported = time.perf_counter() - start
        size = (run_dir / "results.sqlite").stat().st_size
    print(f"points: {out.points_total}, examples: {n_examples}")
    print(f"run + store (fake model): {stored:.2f} s = {1e3 * stored / out.points_total:.1f} ms "
          f"per point ({1e6 * stored / n_examples:.0f} us per example)")
    print(f"re-run, all finished:     {resumed:.2f} s")
    print(f"load + analysis (1000 bootstrap replicates): {analysed:.2f} s")
    print(f"report (analysis + plots + html/md): {reported:.2f} s")
    print(f"store size: {size / 1e6:.1f} MB ({size / n_examples:.0f} bytes per example)")


if __name__ == "__main__":
    main()
