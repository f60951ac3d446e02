"""Run a study: validate, plan, skip what is finished, compress and evaluate the rest.

    recipe = load_recipe("recipes/demo.yaml")
    outcome = run_study(recipe, "runs/demo")

Every finished point goes straight into the run directory's SQLite store, so the run can be
killed at any moment and started again: it picks up where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prunelab.errors import PrunelabError
from prunelab.paths import atomic_file, write_json_atomic
from prunelab.study.backend import Backend, PrunelabBackend, timed
from prunelab.study.plan import Unit, grid_summary, plan
from prunelab.study.recipe import Recipe, recipe_error
from prunelab.study.store import STORE_FILE, Store

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"


@dataclass
class Study:
    """A validated recipe with its grid: everything known before any model is loaded."""

    recipe: Recipe
    backend: Backend
    units: list[Unit]
    versions: dict

    @property
    def grid_ids(self) -> set[str]:
        return {g for u in self.units for g in u.grid_ids.values()}


@dataclass
class Outcome:
    run_dir: Path
    points_total: int
    points_done_before: int
    points_run: int
    seconds: float
    report: dict[str, Path] = field(default_factory=dict)


def prepare(recipe: Recipe, backend: Backend | None = None) -> Study:
    """Check everything the schema cannot (methods, patterns, tasks, models); plan the grid.

    All problems are collected into one error so the user fixes them in one go."""
    backend = backend or PrunelabBackend()
    problems = backend.check(recipe)
    if problems:
        raise recipe_error(recipe.name, problems)
    tasks = backend.describe_tasks(recipe.tasks)
    versions = backend.versions()
    units = plan(recipe, tasks, backend.uses_calibration, versions)
    return Study(recipe, backend, units, versions)


# -- the run directory ----------------------------------------------------------------------------


def claim_run_dir(run_dir: Path, recipe: Recipe, versions: dict, force: bool,
                  grid_ids: set[str] | None = None) -> None:
    """Make `run_dir` this recipe's, refusing a directory that belongs to another recipe.

    With `force` the directory is taken over: finished points that the new recipe shares with
    the old one (same config) are kept and reused; the report only ever shows the new grid.
    """
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        owner = json.loads(run_file.read_text())
        if owner.get("fingerprint") != recipe.fingerprint() and not force:
            raise PrunelabError(
                f"run directory {run_dir} holds results of another recipe "
                f"({owner.get('name')}, fingerprint {owner.get('fingerprint')})",
                "pass a new --run-dir, or --force to reuse it (matching points are kept)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise PrunelabError(f"{run_dir} exists and is not a prunelab run directory",
                            "pass a new or empty --run-dir, or --force")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / RECIPE_FILE) as handle:
        handle.write(recipe.to_yaml())
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    write_json_atomic(run_file, {
        "name": recipe.name, "fingerprint": recipe.fingerprint(), "versions": versions,
        "created": previous.get("created", time.time()), "updated": time.time(),
        "recipe": recipe.model_dump(mode="json"),
        # Which store rows belong to this recipe: the report shows exactly these cells.
        "grid_ids": sorted(grid_ids or [])})


def read_run(run_dir: str | Path) -> tuple[Recipe, dict]:
    """The recipe and run record of a run directory (for `results` and `report`)."""
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file() or not (run_dir / STORE_FILE).is_file():
        raise PrunelabError(f"{run_dir} is not a prunelab run directory (no {RUN_FILE} or "
                            f"{STORE_FILE})", "pass the --run-dir a study wrote to")
    record = json.loads(run_file.read_text())
    return Recipe.model_validate(record["recipe"]), record


# -- executors ------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs units of work. Local now; a distributed executor ships units to workers that write
    to the same store (each point is one transaction, keyed by its config, so order is free)."""

    def run(self, units: list[Unit], work) -> None: ...


class LocalExecutor:
    """One unit after another, in study order, in this process."""

    def run(self, units: list[Unit], work) -> None:
        for unit in units:
            work(unit)


class _Worker:
    """Does one unit: restore the dense weights, compress once, evaluate every pending task."""

    def __init__(self, study: Study, store: Store, done: set[str], bar, weights: dict):
        self.study, self.store, self.done, self.bar = study, store, done, bar
        self.weights = weights  # (model, compression label, task or None) -> estimated seconds
        self.model_name: str | None = None
        self.handle: Any = None
        self.points_run = 0

    def _model(self, name: str):
        if name != self.model_name:
            self.handle = None  # free the previous model before loading the next
            self.handle = self.study.backend.load(name)
            self.model_name = name
        return self.handle

    def __call__(self, unit: Unit) -> None:
        backend, recipe = self.study.backend, self.study.recipe
        pending = [t for t in unit.tasks if unit.keys[t.name] not in self.done]
        if not pending:
            return
        if unit.model != self.model_name:
            self.bar.set_description(f"{unit.model}: loading")
        handle = self._model(unit.model)
        backend.reset(handle)
        self.bar.set_description(f"{unit.model} {unit.compression.label}: compressing")
        result, seconds = None, 0.0
        if not unit.compression.is_dense:
            result, seconds = timed(backend.compress, handle, unit.compression)
        ppl = None
        if recipe.perplexity:
            p = recipe.perplexity
            ppl = backend.perplexity(handle, p.source, p.seqlen, p.n_windows)
        self.store.put_compression(unit.compression_key, unit.model, unit.compression.config(),
                                   result, ppl, backend.model_info(handle), seconds)
        self.bar.update(self.weights.get((unit.model, unit.compression.label, None), 1.0))
        for task in pending:
            self.bar.set_description(f"{unit.model} {unit.compression.label}: {task.name}")
            (examples, summary), seconds = timed(
                backend.evaluate, handle, task, recipe.eval.limit, recipe.eval.seed,
                recipe.eval.batch_size)
            self.store.put_point(point_row(unit, task, summary, seconds), examples)
            self.done.add(unit.keys[task.name])
            self.points_run += 1
            self.bar.update(self.weights.get((unit.model, unit.compression.label, task.name), 1.0))


def point_row(unit: Unit, task, summary: dict, seconds: float) -> dict:
    comp = unit.compression
    return {
        "key": unit.keys[task.name], "grid_id": unit.grid_ids[task.name], "model": unit.model,
        "method": comp.method, "sparsity": comp.sparsity, "pattern": comp.pattern,
        "options": dict(comp.options), "seed": comp.seed, "band": comp.band,
        "task": task.name, "family": task.family, "axis": task.axis, "level": task.level,
        "level_rank": task.level_rank, "metric": summary.get("metric"),
        "lower_better": summary.get("metric") == "bits_per_byte", "n": summary.get("n", 0),
        "score": summary.get("score"), "ci_low": summary.get("ci_low"),
        "ci_high": summary.get("ci_high"),
        "chance": summary.get("chance", task.chance), "at_chance": summary.get("at_chance"),
        "config": {"compression": comp.config(), "task": task.name},
        "seconds": round(seconds, 3),
    }


# -- entry points ---------------------------------------------------------------------------------


def run_study(recipe: Recipe, run_dir: str | Path, *, force: bool = False,
              backend: Backend | None = None, executor: Executor | None = None,
              progress: bool = True, report: bool = True) -> Outcome:
    """Run (or resume) a study into `run_dir`, then write its report. Returns what was done."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    study = prepare(recipe, backend)
    run_dir = Path(run_dir)
    claim_run_dir(run_dir, recipe, study.versions, force, study.grid_ids)
    with Store.in_dir(run_dir) as store:
        done = store.finished_keys()
        total = sum(len(u.tasks) for u in study.units)
        before = sum(1 for u in study.units for k in u.keys.values() if k in done)
        todo = [u for u in study.units if any(k not in done for k in u.keys.values())]
        weights = _step_weights(study, todo, done)
        # The bar counts estimated seconds, not steps: a SparseGPT prune weighs more than one
        # small task, so the ETA (which tqdm rescales by the measured rate) stays honest.
        with tqdm(total=sum(weights.values()) * 1.0001, disable=not progress,
                  dynamic_ncols=True, file=sys.stderr,
                  bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]") as bar:
            worker = _Worker(study, store, done, bar, weights)
            (executor or LocalExecutor()).run(todo, worker)
    outcome = Outcome(run_dir, total, before, worker.points_run, time.perf_counter() - started)
    if report:
        from prunelab.report import build_report

        outcome.report = build_report(run_dir)
    return outcome


def _step_weights(study: Study, units: list[Unit], done: set[str]) -> dict:
    weights = {}
    for unit in units:
        label = (unit.model, unit.compression.label)
        compress, _ = study.backend.estimate(study.recipe, unit.model, unit.compression, [])
        weights[(*label, None)] = max(compress, 0.01)
        for task in unit.tasks:
            if unit.keys[task.name] not in done:
                _, seconds = study.backend.estimate(study.recipe, unit.model, unit.compression,
                                                    [task])
                weights[(*label, task.name)] = max(seconds, 0.01)
    return weights


def dry_run(recipe: Recipe, backend: Backend | None = None,
            run_dir: str | Path | None = None) -> dict:
    """The grid, its size and a rough time estimate; nothing is loaded or run."""
    study = prepare(recipe, backend)
    done: set[str] = set()
    if run_dir is not None and (Path(run_dir) / STORE_FILE).is_file():
        with Store.in_dir(run_dir) as store:
            done = store.finished_keys()
    rows, total = [], 0.0
    for unit in study.units:
        pending = [t for t in unit.tasks if unit.keys[t.name] not in done]
        compress, evaluate = (0.0, 0.0)
        if pending:
            compress, evaluate = study.backend.estimate(recipe, unit.model, unit.compression,
                                                        pending)
        total += compress + evaluate
        rows.append({"model": unit.model, "compression": unit.compression.label,
                     "tasks": len(unit.tasks), "pending": len(pending),
                     "est_seconds": round(compress + evaluate, 1)})
    return {"grid": grid_summary(recipe, study.units), "units": rows,
            "tasks": [t.name for t in study.units[0].tasks] if study.units else [],
            "pending_points": sum(r["pending"] for r in rows), "est_seconds": round(total, 1)}
