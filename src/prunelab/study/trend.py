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

import numpy as np


def slopes(ranks: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """Least-squares slope of drops [..., L] on ranks [L], along the last axis."""
    r = np.asarray(ranks, float)
    r = r - r.mean()
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


def min_detectable_effect(levels: list[tuple[int, float]], *, ranks: list[float] | None = None,
                          kept: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest extra drop of the hardest level over the easiest that the trend test
    detects with `power`, for levels given as (items, dense score in [0, 1]) in rank order
    (`ranks`: their level ranks, default 0, 1, 2, ...).

    Normal approximation at one sparsity where a share `kept` of the dense model's credit
    survives: an item keeps its credit with probability `kept`, so the level's relative
    score P̄/D̄ has variance kept·(1 − kept) / (n · dense) (delta method). The slope's
    variance follows from the levels' (independent) variances; the effect is the slope times
    the span of ranks. Pooling several sparsities shrinks it little: they share the items.
    """
    from statistics import NormalDist

    ranks = np.asarray(ranks if ranks is not None else range(len(levels)), dtype=float)
    centred = ranks - ranks.mean()
    variances = np.array([kept * (1 - kept) / (max(n, 1) * max(p, 1e-9)) for n, p in levels])
    slope_se = float(np.sqrt((centred ** 2 * variances).sum()) / (centred ** 2).sum())
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * slope_se * (ranks[-1] - ranks[0])
