"""The Junk DNA paper's transfer figures: each setting's score as a share of Dense Transfer,
and how much of pruning's loss fine-tuning gives back.

For every task level and sparsity, with a bootstrap over the level's items (the same
resample for every setting: they answer the same items) and over seeds:
- % of Dense Transfer = relative performance of a setting's score to the `dense` transfer
  arm's score (the metric's own relative: pruned / dense, or its inverse where lower is
  better);
- gap closed by sparse-to-dense = (r_s2d − r_sparse) / (1 − r_sparse), r being % of Dense
  Transfer: 1 = regrowing the pruned weights recovers everything sparse transfer lost, 0 =
  nothing ("irreversible");
- freeze keeps = r_freeze: what keeping the small weights frozen at their pre-trained values
  retains.
"""

from __future__ import annotations

import numpy as np

from prunelab.study.trend import percentile_ci


def transfer_settings(points: list[dict]) -> dict[str, str]:
    """Arm label -> transfer setting, for arms whose chain starts with a transfer stage."""
    out = {}
    for p in points:
        stages = p.get("stages") or []
        if stages and isinstance(stages[0], dict) and stages[0].get("kind") == "transfer":
            out[p["arm"]] = stages[0]["setting"]
    return out


def _score(lv, key, idx, seed_pick) -> np.ndarray:
    runs = list(lv.pruned[key].values())
    per_seed = np.stack([v[idx].sum(axis=-1) / w[idx].sum(axis=-1) if idx is not None
                         else np.array([v.sum() / w.sum()]) for v, w in runs])  # [R, B]
    if seed_pick is None or len(runs) == 1:
        return per_seed.mean(axis=0)
    pick = seed_pick[:, : len(runs)] % len(runs)
    return per_seed[pick, np.arange(per_seed.shape[1])[:, None]].mean(axis=1)


def analyse_transfer(levels: list, settings: dict[str, str], *, n_boot: int = 1000,
                     seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(rows of % of Dense Transfer, rows of irreversibility figures) from the study's
    `stats.Level`s; empty without a dense transfer arm."""
    shares, recovery = [], []
    for lv in levels:
        keys = [key for key in lv.pruned if key[0] in settings]
        reference = [key for key in keys if settings[key[0]] == "dense"]
        n = len(lv.ids)
        if not reference or n == 0:
            continue
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        seeds = max(len(lv.pruned[key]) for key in keys)
        seed_pick = rng.integers(0, seeds, size=(n_boot, seeds)) if seeds > 1 else None
        dense_point = _score(lv, reference[0], None, None)
        dense_boot = _score(lv, reference[0], idx, seed_pick)
        relative: dict[tuple[str, float], tuple[float, np.ndarray]] = {}
        base = {"model": lv.model, "task": lv.task, "family": lv.family, "level": lv.level}
        with np.errstate(invalid="ignore", divide="ignore"):
            for key in keys:
                setting = settings[key[0]]
                if setting == "dense":
                    continue
                point = float(lv.metric.relative(_score(lv, key, None, None), dense_point)[0])
                boot = lv.metric.relative(_score(lv, key, idx, seed_pick), dense_boot)
                relative.setdefault((setting, key[1]), (point, boot))
                shares.append({**base, "setting": setting, "arm": key[0], "x": key[1],
                               "of_dense_transfer": point, "ci": percentile_ci(boot)})
            for x in sorted({x for (_, x) in relative}):
                sparse = relative.get(("sparse", x))
                regrow = relative.get(("sparse-to-dense", x))
                frozen = relative.get(("freeze", x))
                row = {**base, "x": x}
                # The gap is only a gap where sparse transfer credibly lost something.
                if sparse and regrow and percentile_ci(sparse[1])[1] < 1:
                    closed = (regrow[0] - sparse[0]) / (1 - sparse[0])
                    closed_boot = (regrow[1] - sparse[1]) / (1 - sparse[1])
                    row.update(gap_closed=closed, gap_closed_ci=percentile_ci(closed_boot))
                if frozen:
                    row.update(freeze_keeps=frozen[0], freeze_keeps_ci=percentile_ci(frozen[1]))
                if len(row) > len(base) + 1:
                    recovery.append(row)
    return shares, recovery
