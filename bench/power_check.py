"""How well the dry run's power model predicts a finished run's uncertainty.

For every arm, family and sparsity of a run: the slope's standard error predicted from the
dense results alone (`trend.continuous_covariance`, at the relative performance the run
actually reached) beside the bootstrap's standard error of the same slope, and the measured
correlation of pruned and dense per-item influence beside the one the model assumes
(`trend.pruned_dense_correlation`).

    .venv/bin/python bench/power_check.py runs/demo
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np

from prunelab.study import trend
from prunelab.study.results import load_run
from prunelab.study.stats import bootstrap_family, collect


def _influence(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    score = values.sum() / weights.sum()
    return (values - score * weights) / weights.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rho", type=float, default=None,
                        help="a fixed correlation instead of the model's")
    args = parser.parse_args()
    run = load_run(args.run_dir, analyse_results=False)
    measure = run.recipe.analysis.item_measure
    levels = collect(run.points, run.store.examples, run.store.example_records, measure)
    families = defaultdict(list)
    for lv in levels:
        if not lv.dense_at_chance:
            families[(lv.model, lv.family)].append(lv)
    print(f"item measure: {measure}; assumed correlation "
          f"{args.rho if args.rho is not None else '1 - 1.5 (1 - kept)'}")
    print(f"{'arm':10s} {'family':14s} {'x':>4s} {'kept':>5s} {'predicted':>9s} "
          f"{'bootstrap':>9s} {'ratio':>6s} {'assumed ρ':>9s} {'measured ρ':>10s}")
    ratios, rhos = [], []
    for (model, family), lvs in families.items():
        if len({lv.level_rank for lv in lvs}) < 2:
            continue
        ranks = np.array([lv.level_rank for lv in lvs], float)
        centred = ranks - ranks.mean()
        paired = all(lv.paired for lv in lvs)
        arms = sorted({a for lv in lvs for (a, _) in lv.pruned})
        for arm in arms:
            fb = bootstrap_family(lvs, arm, 1000, 0, "relative")
            for xi, x in enumerate(fb.xs):
                kept = float(np.nanmean(fb.point[:, xi]))
                if not math.isfinite(kept) or not 0.05 < kept < 0.995:
                    continue
                cov = trend.continuous_covariance(lvs[0].metric, [lv.dense for lv in lvs],
                                                  [len(lv.ids) for lv in lvs], paired=paired,
                                                  kept=kept, rho=args.rho)
                predicted = math.sqrt(centred @ cov @ centred) / (centred @ centred)
                slope_b = trend.slopes(ranks, 1 - fb.boot[:, :, xi])
                observed = float(np.nanstd(slope_b[np.isfinite(slope_b)], ddof=1))
                measured = []
                for lv in lvs:
                    runs = lv.pruned.get((arm, x))
                    if runs:
                        zp = _influence(*next(iter(runs.values())))
                        measured.append(np.corrcoef(_influence(*lv.dense), zp)[0, 1])
                rho = float(np.nanmean(measured))
                ratios.append(predicted / observed)
                rhos.append(rho)
                assumed = args.rho if args.rho is not None else \
                    trend.pruned_dense_correlation(kept)
                print(f"{arm:10s} {family:14s} {x:4.1f} {kept:5.2f} {predicted:9.4f} "
                      f"{observed:9.4f} {predicted / observed:6.2f} {assumed:9.2f} {rho:10.2f}")
    print(f"median predicted / bootstrap standard error: {np.median(ratios):.2f} "
          f"(quartiles {np.quantile(ratios, 0.25):.2f}-{np.quantile(ratios, 0.75):.2f}); "
          f"median measured ρ {np.median(rhos):.2f}")


if __name__ == "__main__":
    main()
