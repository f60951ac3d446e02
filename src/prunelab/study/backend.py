"""What the study runner asks of the rest of prunelab, in one small interface.

The runner never imports torch, the zoo, the methods or the evaluation engine directly: it talks
to a `Backend`. `PrunelabBackend` is the real one; tests use `prunelab.study.testing.FakeBackend`
(no model, instant) so that resumption, statistics and the report are tested in seconds.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Protocol

from prunelab.study.plan import CompressionPoint, TaskInfo
from prunelab.study.recipe import Recipe
from prunelab.study.stages import DEFERRED_TRANSFER, Stage


class Backend(Protocol):
    def versions(self) -> dict: ...
    def check(self, recipe: Recipe) -> list[tuple[str, str]]: ...  # (yaml path, problem)
    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]: ...
    def uses_calibration(self, stage: Stage) -> bool: ...
    def load(self, model: str, dtype: str = "fp32") -> Any: ...
    def model_info(self, handle: Any) -> dict: ...
    def reset(self, handle: Any) -> None: ...  # back to the dense model
    def compress(self, handle: Any, point: CompressionPoint) -> dict: ...
    # A registered measure (`prunelab.study.measures`) on the model as it stands.
    def measure(self, handle: Any, measure: Any, config: Any, work: Any = None) -> Any: ...
    def evaluate(self, handle: Any, task: TaskInfo, limit: int | None, seed: int,
                 batch_size: int) -> tuple[list[dict], dict]: ...
    def estimate(self, recipe: Recipe, model: str, point: CompressionPoint,
                 tasks: list[TaskInfo]) -> tuple[float, float]: ...  # (compress s, eval s)


# Local task files whose tasks this process has registered.
_REGISTERED_FILES: set[str] = set()


class _Handle:
    """A loaded model plus a pristine copy of the dense model, restored before each
    compression (cheaper than reloading from disk).

    When a stage changed the model's structure (structured pruning removes heads and
    channels, so shapes and the config change), the weights cannot be copied back into the
    old tensors: the model is then rebuilt from the pristine copy."""

    def __init__(self, loaded):
        from prunelab.evaluate.scoring import ScoreCache

        self.loaded = loaded
        self.pristine = copy.deepcopy(loaded.model)
        self.dirty = False
        # Log-likelihoods scored on the model as it stands, and the levels scored into them
        # ahead of their turn; both are emptied whenever the model changes.
        self.scores = ScoreCache()
        self.scored_levels: set[str] = set()
        # What measures keep of the dense model between compressions, by measure name
        # (divergence: its windows and the dense hidden states).
        self.cache: dict[str, Any] = {}

    def forget_scores(self) -> None:
        self.scores.clear()
        self.scored_levels.clear()

    def reset(self) -> None:
        self.forget_scores()
        self.loaded.info.pop(DEFERRED_TRANSFER, None)
        if not self.dirty:
            return
        if _same_structure(self.loaded.model, self.pristine):
            self.loaded.model.load_state_dict(self.pristine.state_dict())
        else:
            self.loaded.model = None  # free the changed model before copying
            self.loaded.model = copy.deepcopy(self.pristine)
        self.dirty = False


def _same_structure(model, reference) -> bool:
    if model.config.to_dict() != reference.config.to_dict():
        return False
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype for k in ours)


class PrunelabBackend:
    """The real thing: zoo models, registered stages, the task suite and evaluation engine.

    With a `device` (e.g. "cuda"), models are moved there when loaded (the pristine dense copy
    too) and every stage, evaluation and fine-tuning runs there. A device other than the CPU
    is part of the points' keys, like the software versions: its float rounding differs."""

    def __init__(self, device: str | None = None):
        from prunelab.devices import resolve_device

        self.device = resolve_device(device)
        self.cache: dict[str, Any] = {}  # what measures keep for the whole study (a judge)
        # Local task spec files the recipe selects (absolute): a worker process of a
        # distributed executor registers their tasks before it evaluates any.
        self.task_files: list[str] = []

    def versions(self) -> dict:
        from prunelab.checkpoint import versions

        found = versions()
        if self.device is not None and self.device.type != "cpu":
            found["device"] = self.device.type
        return found

    def check(self, recipe: Recipe) -> list[tuple[str, str]]:
        from prunelab.devices import check_dtype
        from prunelab.errors import PrunelabError
        from prunelab.study.checks import check_recipe

        problems = check_recipe(recipe)
        for dtype in dict.fromkeys([recipe.dtype, *recipe.model_dtypes.values()]):
            try:
                check_dtype(dtype, self.device)
            except PrunelabError as exc:  # the device cannot compute in it
                path = "dtype" if dtype == recipe.dtype else "model_dtypes"
                problems.append((path, f"{exc.problem}; {exc.fix}"))
        return problems

    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]:
        from prunelab.tasks.local import is_spec_path
        from prunelab.tasks.registry import get_tasks, register

        tasks = get_tasks(selectors)
        if any(is_spec_path(s) for s in selectors):
            for task in tasks:  # tasks from local spec files: findable by name from now on
                register(task)
            self.task_files = [str(Path(s).expanduser().resolve()) for s in selectors
                               if is_spec_path(s)]
            _REGISTERED_FILES.update(self.task_files)
        return [TaskInfo(t.name, t.family, t.axis, t.level, t.level_rank, t.chance, t.size,
                         t.kind, t.content_digest, t.paired_levels) for t in tasks]

    def uses_calibration(self, stage: Stage) -> bool:
        return stage.needs_calibration()

    def load(self, model: str, dtype: str = "fp32") -> _Handle:
        self._register_task_files()
        return _Handle(self.load_model(model, dtype))

    def _register_task_files(self) -> None:
        """In a process that did not plan the study (a Ray worker), the recipe's local task
        files are read here, so that their tasks are found by name."""
        from prunelab.tasks.local import load_task_file
        from prunelab.tasks.registry import register

        for path in self.task_files:
            if path not in _REGISTERED_FILES:
                for task in load_task_file(path):
                    register(task)
                _REGISTERED_FILES.add(path)

    def load_model(self, model: str, dtype: str = "fp32"):
        """A zoo model or model directory, in `dtype`, on this backend's device."""
        from prunelab.zoo.models import load_model

        loaded = load_model(model, dtype=dtype)
        if self.device is not None:
            loaded.model.to(self.device)
        return loaded

    def model_info(self, handle: _Handle) -> dict:
        from prunelab.zoo.models import DEQUANTIZED_CAVEAT

        loaded = handle.loaded
        dequantized = bool(getattr(loaded, "dequantized", loaded.info.get("dequantized", False)))
        params = sum(p.numel() for p in loaded.model.parameters())
        return {"name": loaded.name, "dequantized": dequantized, "parameters": params,
                "architecture": type(loaded.model).__name__,
                "caveat": DEQUANTIZED_CAVEAT if dequantized else None}

    def reset(self, handle: _Handle) -> None:
        handle.reset()

    def compress(self, handle: _Handle, point: CompressionPoint) -> dict:
        handle.dirty = True
        handle.forget_scores()
        records = [stage.run(handle.loaded, calibration, point.seed)
                   for stage, calibration in zip(point.stages, point.calibration)]
        if len(records) == 1:
            return records[0]
        return {"stages": records, **{k: records[-1][k] for k in ("overall_sparsity",)
                                      if k in records[-1]}}

    def measure(self, handle: _Handle, measure, config, work=None):
        return measure.run(self, handle, config, work)

    def evaluate(self, handle: _Handle, task: TaskInfo, limit: int | None, seed: int,
                 batch_size: int) -> tuple[list[dict], dict]:
        from prunelab.evaluate.runner import evaluate

        results = evaluate(handle.loaded, [task.name], limit=_level_limit(task, limit), seed=seed,
                           batch_size=batch_size, progress=False, scores=handle.scores)
        summary = results.summary()[0]
        return [example_row(ex.to_dict()) for ex in results.examples], summary

    def score_together(self, handle: _Handle, tasks: tuple[TaskInfo, ...], limit: int | None,
                       seed: int, batch_size: int) -> None:
        """Score the levels still to be evaluated on this model in one pass, ahead of their
        turn (`prunelab.evaluate.runner.score_together`); each `evaluate` then reads its
        log-likelihoods from the handle's cache."""
        from prunelab.evaluate.runner import score_together

        todo = [t for t in tasks if t.name not in handle.scored_levels]
        if len(todo) < 2:
            return
        score_together(handle.loaded, [(t.name, _level_limit(t, limit)) for t in todo],
                       seed=seed, batch_size=batch_size, scores=handle.scores)
        handle.scored_levels.update(t.name for t in todo)

    def estimate(self, recipe: Recipe, model: str, point: CompressionPoint,
                 tasks: list[TaskInfo]) -> tuple[float, float]:
        from prunelab.study.estimate import rough_estimate

        return rough_estimate(recipe, model, point, tasks)


def _level_limit(task: TaskInfo, limit: int | None) -> int | None:
    """A small level is used whole."""
    return min(limit, task.size) if limit is not None and task.size is not None else limit


def example_row(record: dict) -> dict:
    """The store's view of one ExampleResult: a value and weight the statistics can resample
    (sum(value)/sum(weight) is the level's score; see `prunelab.evaluate.metrics`)."""
    from prunelab.evaluate.metrics import get_metric

    value, weight = get_metric(record.get("metric", "accuracy")).example(record)
    return {"example_id": str(record.get("example_id")), "value": value, "weight": weight,
            "margin": record.get("margin"), "data": record}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
