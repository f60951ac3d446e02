"""Everything a report or an export needs from a run directory, loaded in one place."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from prunelab.study.recipe import Recipe
from prunelab.study.stats import Analysis, analyse
from prunelab.study.runner import read_run
from prunelab.study.store import Store


@dataclass
class Run:
    run_dir: Path
    recipe: Recipe
    record: dict  # run.json: fingerprint, versions, grid ids
    store: Store
    points: list[dict]  # this recipe's finished points (newest copy of each grid cell)
    compressions: list[dict]
    analysis: Analysis | None

    @property
    def models(self) -> dict[str, dict]:
        """Model info by name (parameters, dequantized, caveat), from the compression rows."""
        out: dict[str, dict] = {}
        for c in self.compressions:
            if c["model_info"]:
                out.setdefault(c["model"], c["model_info"])
        return out

    @cached_property
    def _compressions_by_key(self) -> dict[tuple[str, str], dict]:
        return {(c["model"], _canon(c["config"])): c for c in self.compressions}

    def compression_of(self, point: dict) -> dict | None:
        """The compressions row (its result, perplexity, measures) a point was evaluated on."""
        return self._compressions_by_key.get(_compression_key(point))

    @property
    def total_points(self) -> int:
        return len(self.record.get("grid_ids", []))


def load_run(run_dir: str | Path, analyse_results: bool = True) -> Run:
    run_dir = Path(run_dir)
    recipe, record = read_run(run_dir)
    store = Store.in_dir(run_dir)
    planned = record.get("grid_ids", [])
    grid_ids = set(planned) or None
    # The recipe's order, not the order points finished in: with several workers or on Ray
    # that order changes from run to run, and the report's rows, and the bootstrap's draws
    # over an arm's seeds, would change with it.
    rank = {grid_id: i for i, grid_id in enumerate(planned)}
    points = sorted(store.points(grid_ids), key=lambda p: rank.get(p["grid_id"], len(rank)))
    first_point: dict[tuple[str, str], int] = {}
    for i, point in enumerate(points):
        first_point.setdefault(_compression_key(point), i)
    compressions = sorted((c for c in store.compressions()
                           if (c["model"], _canon(c["config"])) in first_point),
                          key=lambda c: first_point[(c["model"], _canon(c["config"]))])
    analysis = None
    if analyse_results:
        a = recipe.analysis
        analysis = analyse(points, store.examples, records=store.example_records,
                           item_measure=a.item_measure, n_boot=a.n_boot, measure=a.measure,
                           thresholds=tuple(a.thresholds))
    return Run(run_dir, recipe, record, store, points, compressions, analysis)


def _canon(config: dict) -> str:
    import json

    return json.dumps(config, sort_keys=True, default=str)


def _compression_key(point: dict) -> tuple[str, str]:
    return point["model"], _canon(point["config"]["compression"])
