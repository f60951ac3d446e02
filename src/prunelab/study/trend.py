"""A trend test for "harder drops more" that means something with two to five levels.

A rank correlation over three levels takes a handful of values, so its bootstrap interval
collapses onto one of them. Instead the statistic is the least-squares slope of the drop
(1 − relative performance) on the level rank, per sparsity, and pooled over the sparsities
of one arm by averaging the per-sparsity slopes within each bootstrap replicate (stratified:
every replicate resamples the same items at every sparsity). Its scale is direct: the
expected extra drop per level of difficulty. Reported with it: the extra drop of the hardest
level over the easiest, its percentile interval, and a two-sided p-value of "no ordering"
(slope 0) from the bootstrap standard error.

Why not a permutation test: permuting items across levels assumes they are exchangeable
when pruning hurts every level alike, which fails where levels differ in their chance floor
(the options family: 2, 4 or 7 choices). Resampling items within their own level makes no
such assumption; `tests/test_trend.py` checks its error rate and power by simulation.

p-values are adjusted across every verdict of one analysis with Holm's method, so the chance
of any false "harder drops more" / "opposite" in a report stays at 5%.
"""

from __future__ import annotations

import math

import numpy as np


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap samples, ignoring non-finite replicates
    (NaN, NaN when none is finite)."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (math.nan, math.nan)
    low, high = np.quantile(samples, [0.025, 0.975])
    return float(low), float(high)


def slopes(ranks: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """Least-squares slope of drops [..., L] on ranks [L], along the last axis."""
    r = np.asarray(ranks, float)
    r = r - r.mean()
    # a replicate whose dense score resampled to 0 has an infinite drop: its slope is NaN
    with np.errstate(invalid="ignore"):
        d = drops - drops.mean(axis=-1, keepdims=True)
        return (d * r).sum(axis=-1) / (r * r).sum()


def bootstrap_p(estimate: float, samples: np.ndarray, items: int) -> float:
    """Two-sided p-value of "no ordering" (slope 0): the estimate over its bootstrap standard
    error, against Student's t with `items` − 1 degrees of freedom (`items`: the fewest items
    of any level).

    Not the share of replicates beyond 0: that cannot go below 1 / replicates, and Holm
    multiplies the smallest p-value by the number of verdicts. Not the normal distribution:
    with tens of 0/1 items per level the statistic's tails are heavier, and simulated studies
    without an effect passed the stricter Holm thresholds twice as often as they should."""
    from scipy.stats import t

    samples = samples[np.isfinite(samples)]
    if samples.size < 2 or not np.isfinite(estimate):
        return float("nan")
    se = float(samples.std(ddof=1))
    if se == 0:
        return 0.0 if estimate != 0 else 1.0
    return float(2 * t.sf(abs(estimate) / se, max(items - 1, 1)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment; NaN stays NaN and is not counted."""
    order = sorted((p, i) for i, p in enumerate(p_values) if np.isfinite(p))
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    m = len(order)
    for k, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


def adjacent_reversals(ranks: np.ndarray, drop_boot: np.ndarray, sign: float,
                       level: float = 0.95) -> list[tuple[int, int]]:
    """Pairs (a, b) of levels on neighbouring ranks (rank a < rank b, no rank between) where
    b's drop is credibly on the other side of a's from the overall trend `sign`: the
    interval of their difference, pooled over the sparsities, excludes 0. Levels sharing a
    rank are not ordered, so they are never a reversal of each other.

    `drop_boot` is [B, L, X], levels in rank order."""
    alpha = (1 - level) / 2
    distinct = sorted(set(ranks.tolist()))
    out = []
    for low_rank, high_rank in zip(distinct, distinct[1:]):
        for a in np.flatnonzero(ranks == low_rank):
            for b in np.flatnonzero(ranks == high_rank):
                diff = np.nanmean(drop_boot[:, b, :] - drop_boot[:, a, :], axis=-1)
                diff = diff[np.isfinite(diff)]
                if diff.size == 0:
                    continue
                low, high = np.quantile(diff, [alpha, 1 - alpha])
                if (sign > 0 and high < 0) or (sign < 0 and low > 0):
                    out.append((int(a), int(b)))
    return out


def detectable_effect(ranks, covariance: np.ndarray, *, alpha: float = 0.05,
                      power: float = 0.8) -> float:
    """The smallest extra drop of the hardest level over the easiest that the trend test
    detects with `power` (two-sided, level `alpha`; normal approximation), given the
    covariance [L, L] of the levels' relative scores at one sparsity: the slope's standard
    error times the span of the ranks. Pooling several sparsities shrinks it little: they
    share the items."""
    from statistics import NormalDist

    ranks = np.asarray(ranks, dtype=float)
    centred = ranks - ranks.mean()
    slope_se = float(np.sqrt(max(centred @ covariance @ centred, 0.0)) / (centred @ centred))
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * slope_se * (ranks.max() - ranks.min())


def binary_covariance(levels: list[tuple[int, float]], kept: float = 0.5) -> np.ndarray:
    """Covariance of the relative scores of 0/1-scored levels given as (items, dense score),
    at a sparsity where a share `kept` of the dense credit survives: each credited item keeps
    its credit with probability `kept`, so P̄/D̄ has variance kept·(1 − kept) / (n · dense)
    (delta method). Levels are independent."""
    return np.diag([kept * (1 - kept) / (max(n, 1) * max(p, 1e-9)) for n, p in levels])


def pruned_dense_correlation(kept: float) -> float:
    """How closely a pruned model's per-item values follow the dense model's where a share
    `kept` of the dense score survives, for the power of continuous measures: the
    correlation falls as damage grows, about 1 − 1.5 · (1 − kept) on a finished demo run
    (`bench/power_check.py` measures it and compares predicted with bootstrap errors)."""
    return float(np.clip(1 - 1.5 * (1 - kept), 0.0, 1.0))


def continuous_covariance(metric, dense: list[tuple[np.ndarray, np.ndarray]], items: list[int],
                          *, paired: bool, kept: float = 0.8,
                          rho: float | None = None) -> np.ndarray:
    """Covariance of the relative scores of levels measured on a continuous scale, from a
    dense pilot: `dense[l]` = (values, weights) of level l's pilot items (for a paired family:
    aligned item by item), `items[l]` = how many items the recipe evaluates.

    Model: at the sparsity where relative performance is `kept`, the pruned score S_P solves
    relative(S_P, S_D) = kept; each item's influence on the score (z_i = (v_i − S w_i) / w̄)
    spreads as the dense one does and correlates `rho` with it (default
    `pruned_dense_correlation(kept)`); for a paired family the levels' influences correlate
    as the dense ones do. Delta method on `metric.relative`."""
    from scipy.optimize import brentq

    rho = pruned_dense_correlation(kept) if rho is None else rho
    influences, gradients = [], []
    for values, weights in dense:
        score = float(values.sum() / weights.sum())
        influences.append((values - score * weights) / weights.mean())
        span = 1e3 * max(abs(score), 1.0)
        low, high = (score - span, score) if metric.higher_is_better else (score, score + span)
        pruned = brentq(lambda s: float(metric.relative(s, score)) - kept, low, high)
        step = 1e-6 * max(abs(score), 1.0)
        grad_pruned = (metric.relative(pruned + step, score)
                       - metric.relative(pruned - step, score)) / (2 * step)
        grad_dense = (metric.relative(pruned, score + step)
                      - metric.relative(pruned, score - step)) / (2 * step)
        gradients.append((float(grad_pruned), float(grad_dense)))
    size = len(dense)
    covariance = np.zeros((size, size))
    for a in range(size):
        for b in range(size):
            if a != b and not paired:
                continue
            za, zb = influences[a], influences[b]
            if za.size < 2 or za.size != zb.size:
                continue
            shared = float(np.cov(za, zb)[0, 1])  # dense-dense; pruned-pruned alike
            (pa, da), (pb, db) = gradients[a], gradients[b]
            # Var/Cov of g_P·z_P + g_D·z_D, with corr(z_P, z_D) = rho on the same item
            # and the cross-level structure of the dense influences.
            covariance[a, b] = shared * (pa * pb + da * db + rho * (pa * db + da * pb)) / (
                min(items[a], items[b]) if a != b else items[a])
    return covariance


def min_detectable_effect(levels: list[tuple[int, float]], *, ranks: list[float] | None = None,
                          kept: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> float:
    """`detectable_effect` for 0/1-scored levels given as (items, dense score) in rank order
    (`ranks`: their level ranks, default 0, 1, 2, ...)."""
    ranks = list(ranks) if ranks is not None else list(range(len(levels)))
    return detectable_effect(ranks, binary_covariance(levels, kept), alpha=alpha, power=power)
