"""Run a study: validate, plan, skip what is finished, compress and evaluate the rest.

    recipe = load_recipe("recipes/demo.yaml")
    outcome = run_study(recipe, "runs/demo")

A point is computed by a `PointWorker` from its `PointWork` alone; an executor decides where
(`LocalExecutor`: here, one after another). The driver (`run_study`) alone writes: every
finished point goes straight into the run directory's SQLite store, so the run can be killed
at any moment and started again: it picks up where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from prunelab.errors import PrunelabError
from prunelab.paths import atomic_file, write_json_atomic
from prunelab.study.backend import Backend, PrunelabBackend, timed
from prunelab.study.estimate import eta_seconds
from prunelab.study.lock import LOCK_FILES, run_dir_lock
from prunelab.study.measures import compression_measures, point_measure
from prunelab.study.plan import CompressionPoint, TaskInfo, Unit, grid_summary, plan
from prunelab.study.power import DETECTABLE_AIM, POWER_AT_KEPT, power  # noqa: F401 (the CLI's)
from prunelab.study.recipe import (Evaluation, Recipe, problems_of, recipe_error, recipe_model,
                                   yaml_path)
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


class StudyInterrupted(KeyboardInterrupt):
    """A study stopped by Ctrl-C (KeyboardInterrupt): every point finished before it is in
    the store, and running the study again resumes from there."""

    def __init__(self, run_dir: Path, points_kept: int):
        super().__init__(f"interrupted; {points_kept} points kept in {run_dir}, "
                         "rerun to resume")
        self.run_dir = run_dir
        self.points_kept = points_kept  # finished points stored in the run dir, all runs


@dataclass
class Outcome:
    run_dir: Path
    points_total: int
    points_done_before: int
    points_run: int
    seconds: float


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


def check_run_dir(run_dir: Path, recipe: Recipe, force: bool) -> None:
    """Refuse a directory that belongs to another recipe, or to no study (writes nothing)."""
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        owner = read_run_record(run_file)
        if owner.get("fingerprint") != recipe.fingerprint() and not force:
            raise PrunelabError(
                f"run directory {run_dir} holds results of another recipe "
                f"({owner.get('name')}, fingerprint {owner.get('fingerprint')})",
                "pass a new --run-dir, or --force to reuse it (matching points are kept)")
    elif run_dir.exists() and not force and any(
            not _left_by_a_claim(p.name) for p in run_dir.iterdir()):
        raise PrunelabError(f"{run_dir} exists and is not a prunelab run directory",
                            "pass a new or empty --run-dir, or --force")


def _left_by_a_claim(name: str) -> bool:
    """What a study killed before its run.json was written leaves: the lock, its pid, the
    recipe copy and half-written temporary files. No result exists yet, so the directory may
    be claimed again."""
    return (name in LOCK_FILES or name == RECIPE_FILE
            or name.startswith((f".{RUN_FILE}.tmp-", f".{RECIPE_FILE}.tmp-")))


def claim_run_dir(run_dir: Path, recipe: Recipe, versions: dict, force: bool,
                  grid_ids: set[str] | None = None) -> None:
    """Make `run_dir` this recipe's, refusing a directory that belongs to another recipe.

    With `force` the directory is taken over: finished points that the new recipe shares with
    the old one (same config) are kept and reused; the report only ever shows the new grid.
    """
    check_run_dir(run_dir, recipe, force)
    run_file = run_dir / RUN_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / RECIPE_FILE) as handle:
        handle.write(recipe.to_yaml())
    previous = read_run_record(run_file) if run_file.is_file() else {}
    write_json_atomic(run_file, {
        "name": recipe.name, "fingerprint": recipe.fingerprint(), "versions": versions,
        "created": previous.get("created", time.time()), "updated": time.time(),
        "recipe": recipe.dump(),
        # Which store rows belong to this recipe: the report shows exactly these cells.
        "grid_ids": sorted(grid_ids or [])})


# What every run.json holds; a file without them was not written whole by `claim_run_dir`.
RUN_RECORD_KEYS = ("name", "fingerprint", "recipe")


def read_run_record(run_file: Path) -> dict:
    """A run directory's run.json, refused in one line when it is damaged (truncated, not
    JSON, not a mapping, keys missing): the store beside it is still good."""
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except ValueError:  # not JSON, or not UTF-8
        what = "is not JSON (truncated or overwritten?)"
    else:
        missing = ([k for k in RUN_RECORD_KEYS if k not in record]
                   if isinstance(record, dict) else None)
        if missing == []:
            return record
        what = (f"misses {', '.join(missing)}" if missing
                else f"holds a {type(record).__name__}, not a run record")
    raise PrunelabError(
        f"{run_file} is damaged: it {what}",
        "delete it and run the study again on this --run-dir with --force (finished points "
        "in its results.sqlite are kept and reused), or pass a fresh --run-dir")


def read_run(run_dir: str | Path) -> tuple[Recipe, dict]:
    """The recipe and run record of a run directory (for `results` and `report`)."""
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file() or not (run_dir / STORE_FILE).is_file():
        raise PrunelabError(f"{run_dir} is not a prunelab run directory (no {RUN_FILE} or "
                            f"{STORE_FILE})", "pass the --run-dir a study wrote to")
    record = read_run_record(run_file)
    try:
        return recipe_model().model_validate(record["recipe"]), record
    except ValidationError as exc:
        unread = ", ".join(yaml_path(loc) for loc, _ in problems_of(exc))
        raise PrunelabError(f"the recipe in {run_file} does not validate here ({unread})",
                            "register the measures it was run with (import the module that "
                            "does), or use the prunelab that wrote it") from None


# -- the unit of work -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointWork:
    """Everything needed to compute one point; an executor may ship it to another process."""

    key: str
    grid_id: str
    model: str
    compression: CompressionPoint
    compression_key: str
    task: TaskInfo
    eval: Evaluation
    # The recipe's compression measures that it asks for: (measure name, its section).
    measures: tuple[tuple[str, Any], ...] = ()
    dtype: str = "fp32"  # the precision the model is loaded and computed in
    # The levels still to run on the same compressed model, this one included: a backend may
    # score them in one pass when the first of them runs.
    together: tuple[TaskInfo, ...] = ()


@dataclass
class PointResult:
    work: PointWork
    row: dict  # the store's points row
    examples: list[dict]
    # Set on the point that built its compressed model: the compressions row to store.
    compression: dict | None = None
    records: dict | None = None  # a point measure's own records by kind (a fine-tuning)


class PointWorker:
    """Computes points: `worker(work) -> PointResult`, a function of the work alone.

    It keeps the loaded model and the compression last applied to it, so that consecutive
    points of one compressed model (the study's order) build it once; nothing is written
    anywhere. One worker lives in each process an executor runs."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.model_name: tuple[str, str] | None = None  # (model, dtype) as loaded
        self.handle: Any = None
        self.applied: str | None = None  # compression key of the model as it stands

    def _model(self, name: str, dtype: str):
        if (name, dtype) != self.model_name:
            self.handle = None  # free the previous model before loading the next
            # fp32 is asked for as before dtypes, so backends without the keyword still work
            self.handle = (self.backend.load(name) if dtype == "fp32"
                           else self.backend.load(name, dtype=dtype))
            self.model_name, self.applied = (name, dtype), None
        return self.handle

    def __call__(self, work: PointWork) -> PointResult:
        handle = self._model(work.model, work.dtype)
        compression = None
        if work.compression_key != self.applied:
            self.applied = None  # a failure below leaves the model in no known state
            compression = self._compress(handle, work)
            self.applied = work.compression_key
        measure = point_measure(work.task)
        (examples, summary), seconds = timed(self.backend.measure, handle, measure, work.eval,
                                             work)
        records = {kind: summary.pop(kind) for kind in measure.point_records if kind in summary}
        return PointResult(work, point_row(work, summary, seconds), examples, compression,
                           records or None)

    def _compress(self, handle, work: PointWork) -> dict:
        """Build the point's compressed model and take its compression measures."""
        backend = self.backend
        backend.reset(handle)
        result, seconds = None, 0.0
        if not work.compression.is_dense:
            result, seconds = timed(backend.compress, handle, work.compression)
        compression = {"key": work.compression_key, "model": work.model,
                       "config": work.compression.config(), "result": result,
                       "model_info": backend.model_info(handle), "seconds": seconds,
                       "measures": {}}
        asked = dict(work.measures)
        for measure in compression_measures():
            config = asked.get(measure.name)
            if config is None or (work.compression.is_dense and not measure.on_dense):
                continue
            compression["measures"][measure.name] = backend.measure(handle, measure, config)
        return compression


def point_row(work: PointWork, summary: dict, seconds: float) -> dict:
    from prunelab.evaluate.metrics import get_metric

    comp, task = work.compression, work.task
    metric = summary.get("metric")
    return {
        "key": work.key, "grid_id": work.grid_id, "model": work.model, **comp.first,
        "arm": comp.arm, "x": comp.x, "x_field": comp.x_field, "x_is_amount": comp.x_is_amount,
        "stages": comp.config()["stages"], "seed": comp.seed,
        "task": task.name, "family": task.family, "axis": task.axis, "level": task.level,
        "level_rank": task.level_rank, "metric": metric,
        "lower_better": not get_metric(metric).higher_is_better, "n": summary.get("n", 0),
        "score": summary.get("score"), "ci_low": summary.get("ci_low"),
        "ci_high": summary.get("ci_high"),
        "chance": summary.get("chance", task.chance), "at_chance": summary.get("at_chance"),
        "config": {"compression": comp.config(), "task": task.name, "task_digest": task.digest,
                   "paired_levels": task.paired},
        "seconds": round(seconds, 3),
    }


# -- executors ------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs points and yields their results as they finish, in any order. `make_worker()`
    builds a `PointWorker` (a distributed executor calls it once in each worker process and
    ships `PointWork` items to it); the driver alone writes the store and the progress bar.

    An executor may also have `check(study, run_dir)`, called after planning and before
    anything is written (a cluster without the resources the points declare is refused
    there), and `close()`, called when the study ends (`prunelab.study.ray_executor`)."""

    def map(self, make_worker: Callable[[], Callable[[PointWork], PointResult]],
            items: list[PointWork]) -> Iterator[PointResult]: ...


class LocalExecutor:
    """One point after another, in study order, in this process."""

    def map(self, make_worker, items):
        worker = make_worker()
        for item in items:
            yield worker(item)


def pending_work(study: Study, done: set[str]) -> list[PointWork]:
    recipe = study.recipe
    asked = tuple((m.name, m.config(recipe)) for m in compression_measures()
                  if m.config(recipe) is not None)
    work = []
    for unit in study.units:
        todo = tuple(t for t in unit.tasks if unit.keys[t.name] not in done)
        work += [PointWork(unit.keys[task.name], unit.grid_ids[task.name], unit.model,
                           unit.compression, unit.compression_key, task, recipe.eval, asked,
                           dtype=unit.dtype, together=todo)
                 for task in todo]
    return work


# -- entry points ---------------------------------------------------------------------------------


def run_study(recipe: Recipe, run_dir: str | Path, *, force: bool = False,
              backend: Backend | None = None, executor: Executor | None = None,
              progress: bool = True) -> Outcome:
    """Run (or resume) a study into `run_dir`. Returns what was done; the report is built
    from the store afterwards (`prunelab.report.build_report(run_dir)`).

    Ctrl-C raises `StudyInterrupted` (a KeyboardInterrupt) saying how many points are kept."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    try:
        study = prepare(recipe, backend)
        # Refused before the lock file is made: a foreign directory is left untouched.
        check_run_dir(run_dir, recipe, force)
        if hasattr(executor, "check"):
            executor.check(study, run_dir)
        with run_dir_lock(run_dir):
            claim_run_dir(run_dir, recipe, study.versions, force, study.grid_ids)
            with Store.in_dir(run_dir) as store:
                total = sum(len(u.tasks) for u in study.units)
                todo = pending_work(study, store.finished_keys())
                points_run = _run_points(study, store, todo, executor, progress)
    except KeyboardInterrupt as exc:
        if isinstance(exc, StudyInterrupted):
            raise
        raise StudyInterrupted(run_dir, _points_kept(run_dir)) from None
    finally:
        if hasattr(executor, "close"):
            executor.close()
    return Outcome(run_dir, total, total - len(todo), points_run,
                   time.perf_counter() - started)


def _run_points(study: Study, store: Store, todo: list[PointWork], executor: Executor | None,
                progress: bool) -> int:
    """Compute the pending points, storing each as it finishes; returns how many ran."""
    from tqdm.auto import tqdm

    weights = _step_weights(study, todo)
    planned = sum(weights.values())
    points_run = 0
    # The bar counts estimated seconds, not steps: a SparseGPT prune weighs more than one
    # small task. Its ETA starts from the plan and follows the measured pace as points finish
    # (`eta_seconds`): tqdm's own, the plan rescaled by the first point's pace (a model load
    # included), showed days for a run of minutes.
    def bar_format(seconds_left: float) -> str:
        return ("{desc} {percentage:3.0f}%|{bar}| [{elapsed}<"
                f"{tqdm.format_interval(seconds_left)}]")

    with tqdm(total=planned * 1.0001, disable=not progress, dynamic_ncols=True,
              file=sys.stderr, bar_format=bar_format(planned)) as bar:
        started = time.perf_counter()

        def advance(seconds: float) -> None:
            left = eta_seconds(planned, bar.n + seconds, time.perf_counter() - started)
            bar.bar_format = bar_format(left)
            bar.update(seconds)

        if todo:
            bar.set_description(_describe(todo[0]))
        results = (executor or LocalExecutor()).map(partial(PointWorker, study.backend), todo)
        for result in results:
            work = result.work
            if result.compression is not None:
                store.put_compression(**result.compression)
                advance(weights.get(work.compression_key, 0.0))
            store.put_point(result.row, result.examples, result.records)
            points_run += 1
            advance(weights.get(work.key, 0.0))
            if points_run < len(todo):
                bar.set_description(_describe(todo[points_run]))
    return points_run


def _points_kept(run_dir: Path) -> int:
    """Finished points in the run directory's store (this run's and earlier ones')."""
    if not (run_dir / STORE_FILE).is_file():
        return 0
    with Store.in_dir(run_dir) as store:
        return len(store.finished_keys())


def _describe(work: PointWork) -> str:
    return f"{work.model} {work.compression.label}: {work.task.name}"


def _step_weights(study: Study, todo: list[PointWork]) -> dict[str, float]:
    """Estimated seconds of each step: building each compressed model (keyed by its
    compression key) and evaluating each point (keyed by the point's key)."""
    weights: dict[str, float] = {}
    for work in todo:
        if work.compression_key not in weights:
            compress, _ = study.backend.estimate(study.recipe, work.model, work.compression, [])
            weights[work.compression_key] = max(compress, 0.01)
        _, seconds = study.backend.estimate(study.recipe, work.model, work.compression,
                                            [work.task])
        weights[work.key] = max(seconds, 0.01)
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
            "pending_points": sum(r["pending"] for r in rows), "est_seconds": round(total, 1),
            "power": power(study, run_dir)}
