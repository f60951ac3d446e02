"""Plots of a study, as PNG bytes (matplotlib, Agg backend: no display, no network)."""

from __future__ import annotations

import io
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # before pyplot: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402

from prunelab.study.stats import Analysis  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(rows: list[dict]) -> dict[str, dict[tuple[str, str], list[dict]]]:
    """model -> (family, arm) -> relative rows."""
    out: dict[str, dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[r["model"]][(r["family"], r["arm"])].append(r)
    return out


def relative_plots(analysis: Analysis, thresholds=(0.9, 0.5)) -> dict[str, bytes]:
    """Per model: relative performance vs sparsity, a panel per family (rows) × arm (columns),
    one line per difficulty level with its 95% bootstrap band. Levels at chance when dense are
    drawn dashed and grey: they are left out of the statistics."""
    swept = {r["arm"] for r in analysis.sweeps}
    rows = [r for r in analysis.relative if r["arm"] not in swept]
    return {model: _panels(cells, "sparsity", thresholds, analysis.measure, dense_at_zero=True)
            for model, cells in _grid(rows).items()}


def sweep_plots(rows: list[dict], xlabel: str, measure: str) -> dict[str, bytes]:
    """Per model: relative performance along a swept field that is not a sparsity (e.g. the
    start of the one |W| band that is pruned)."""
    return {model: _panels(cells, xlabel, (), measure, dense_at_zero=False)
            for model, cells in _grid(rows).items()}


def kind_overlay_plots(rows: list[dict], kinds: dict[str, str],
                       measure: str) -> dict[str, bytes]:
    """Per model: a panel per family (rows) × difficulty level (columns), one line per arm
    along bits removed per weight: pruning solid, quantization dashed, both dotted."""
    styles = {"pruning": "-", "quantization": "--", "prune + quantize": ":"}
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        families = list(dict.fromkeys(r["family"] for r in mine))
        levels = {f: sorted({(r["level_rank"], str(r["level"])) for r in mine
                             if r["family"] == f}) for f in families}
        width = max(len(v) for v in levels.values())
        fig, axes = plt.subplots(len(families), width, squeeze=False, sharey=True,
                                 figsize=(3.2 * width + 0.8, 2.6 * len(families) + 0.4))
        cmap = plt.get_cmap("tab10")
        arms = list(dict.fromkeys(r["arm"] for r in mine))
        for fi, family in enumerate(families):
            for li in range(width):
                ax = axes[fi][li]
                if li >= len(levels[family]):
                    ax.axis("off")
                    continue
                rank, level = levels[family][li]
                for ai, arm in enumerate(arms):
                    pts = sorted((r for r in mine if r["family"] == family
                                  and str(r["level"]) == level and r["arm"] == arm),
                                 key=lambda r: r["x"])
                    if not pts:
                        continue
                    ax.plot([0.0] + [r["x"] for r in pts], [1.0] + [r["relative"] for r in pts],
                            marker="o", ms=3, color=cmap(ai % 10),
                            ls=styles.get(kinds.get(arm, ""), "-"), label=arm)
                ax.set_title(f"{family}: {level}", fontsize=8)
                ax.set_xlabel("bits removed per weight", fontsize=7)
                ax.tick_params(labelsize=7)
                ax.axhline(1.0, color="0.85", lw=0.8)
        axes[0][0].set_ylabel(f"relative ({measure})", fontsize=7)
        axes[0][0].legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out[model] = buf.getvalue()
    return out


def _panels(cells: dict[tuple[str, str], list[dict]], xlabel: str, thresholds, measure: str,
            dense_at_zero: bool) -> bytes:
    families = list(dict.fromkeys(f for f, _ in cells))
    arms = list(dict.fromkeys(a for _, a in cells))
    fig, axes = plt.subplots(len(families), len(arms), squeeze=False, sharey=True,
                             figsize=(3.4 * len(arms) + 0.8, 2.7 * len(families) + 0.4))
    cmap = plt.get_cmap("viridis")
    for fi, family in enumerate(families):
        for ai, arm in enumerate(arms):
            ax = axes[fi][ai]
            data = cells.get((family, arm), [])
            levels = sorted({(r["level_rank"], str(r["level"])) for r in data})
            for li, (rank, level) in enumerate(levels):
                pts = sorted((r for r in data if str(r["level"]) == level), key=lambda r: r["x"])
                xs = [r["x"] for r in pts]
                ys = [r["relative"] for r in pts]
                lo = [r["ci_low"] for r in pts]
                hi = [r["ci_high"] for r in pts]
                if dense_at_zero:
                    xs, ys, lo, hi = [0.0] + xs, [1.0] + ys, [1.0] + lo, [1.0] + hi
                at_chance = pts and pts[0]["dense_at_chance"]
                color = "0.6" if at_chance else cmap(li / max(1, len(levels) - 1) * 0.9)
                label = f"{level}" + (" (at chance)" if at_chance else "")
                ax.plot(xs, ys, marker="o", ms=3, color=color, ls="--" if at_chance else "-",
                        label=label)
                if not at_chance and all(map(math.isfinite, lo + hi)):
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
            for t in thresholds:
                ax.axhline(t, color="0.8", lw=0.8, ls=":")
            ax.set_title(f"{family} · {arm}", fontsize=9)
            ax.grid(alpha=0.3)
            if fi == len(families) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
            if ai == 0:
                ax.set_ylabel("fraction of dense" if measure == "relative" else "above-chance kept",
                              fontsize=8)
            if data:
                ax.legend(fontsize=7, title="level", title_fontsize=7, loc="lower left")
    fig.tight_layout()
    return _png(fig)
