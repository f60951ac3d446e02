"""From a recipe to the ordered list of work: units (one compressed model each) × task points.

Ordering: for each model, the dense model first, then every compression; each compressed model
is built once and evaluated on every task before the next is built. A *point* is one
(model, compression, seed, task level); its key is a hash of its full config, versions included,
so that a finished point is recognised on any later run and never recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from prunelab.study.recipe import Recipe


@dataclass(frozen=True)
class TaskInfo:
    """What the study needs to know of one task level (a `prunelab.tasks.Task` projected)."""

    name: str
    family: str
    axis: str
    level: Any
    level_rank: int
    chance: float | None = None
    size: int | None = None
    kind: str = "mc"


@dataclass(frozen=True)
class CompressionPoint:
    """One way of compressing a model: dense, a method at one sparsity/pattern, or a band."""

    method: str  # "dense" for the unpruned model
    sparsity: float = 0.0
    pattern: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None  # None when the method draws no calibration data
    calibration: tuple[tuple[str, Any], ...] | None = None
    band: bool = False

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def label(self) -> str:
        if self.is_dense:
            return "dense"
        what = self.pattern or f"{self.sparsity:.0%}"
        if self.band:
            low = dict(self.options)["band_low"]
            what = f"band [{low:.2f}, {low + self.sparsity:.2f})"
        return f"{self.method} {what}" + (f" seed {self.seed}" if self.seed is not None else "")

    def config(self) -> dict:
        return {"method": self.method, "sparsity": round(self.sparsity, 6), "pattern": self.pattern,
                "options": dict(self.options), "seed": self.seed,
                "calibration": dict(self.calibration) if self.calibration else None,
                "band": self.band}


@dataclass
class Unit:
    """One compressed model and the task levels to evaluate on it."""

    model: str
    compression: CompressionPoint
    tasks: list[TaskInfo]
    keys: dict[str, str] = field(default_factory=dict)  # task name -> point key
    grid_ids: dict[str, str] = field(default_factory=dict)  # task name -> key without versions

    @property
    def compression_key(self) -> str:
        return digest({"model": self.model, "compression": self.compression.config()})


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def point_config(recipe: Recipe, model: str, comp: CompressionPoint, task: TaskInfo) -> dict:
    """Everything that decides a point's result, except software versions."""
    return {"model": model, "compression": comp.config(), "task": task.name,
            "level": task.level, "eval": {"limit": recipe.eval.limit, "seed": recipe.eval.seed}}


def compressions(recipe: Recipe, uses_calibration) -> list[CompressionPoint]:
    """Every compression of the recipe, in study order (dense excluded).

    Methods that draw no calibration data are deterministic: they run once, not once per seed.
    """
    out: list[CompressionPoint] = []
    calib = tuple(sorted(recipe.calibration.model_dump().items()))

    def add(method, sparsity, pattern, options, band=False):
        opts = tuple(sorted(options.items()))
        if uses_calibration(method):
            for seed in recipe.seeds:
                out.append(CompressionPoint(method, sparsity, pattern, opts, seed, calib, band))
        else:
            out.append(CompressionPoint(method, sparsity, pattern, opts, None, None, band))

    for comp in recipe.compressions:
        for s in sorted(comp.sparsity):
            add(comp.method, float(s), None, comp.options)
        for pattern in comp.patterns:
            add(comp.method, pattern_sparsity(pattern), pattern.strip(), comp.options)
    if recipe.band_probe:
        width = recipe.band_probe.width
        for start in sorted(recipe.band_probe.starts):
            add("magnitude-band", width, None,
                {"band_low": round(start, 6), "band_high": round(start + width, 6)}, band=True)
    # A recipe may list the same compression twice; keep the first.
    return list(dict.fromkeys(out))


def pattern_sparsity(pattern: str) -> float:
    """"2:4" keeps 2 of every 4 weights: sparsity 0.5. (Validated beforehand.)"""
    n, m = (int(x) for x in pattern.split(":"))
    return 1 - n / m


def plan(recipe: Recipe, tasks: list[TaskInfo], uses_calibration, versions: dict) -> list[Unit]:
    units = []
    for model in recipe.models:
        for comp in [CompressionPoint("dense")] + compressions(recipe, uses_calibration):
            unit = Unit(model, comp, list(tasks))
            for task in tasks:
                config = point_config(recipe, model, comp, task)
                unit.grid_ids[task.name] = digest(config)
                unit.keys[task.name] = digest({**config, "versions": versions})
            units.append(unit)
    return units


def grid_summary(recipe: Recipe, units: list[Unit]) -> dict:
    n_points = sum(len(u.tasks) for u in units)
    return {"models": len(recipe.models), "compressed_models": len(units),
            "task_levels": len(units[0].tasks) if units else 0, "points": n_points}
