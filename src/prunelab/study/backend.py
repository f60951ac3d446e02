"""What the study runner asks of the rest of prunelab, in one small interface.

The runner never imports torch, the zoo, the methods or the evaluation engine directly: it talks
to a `Backend`. `PrunelabBackend` is the real one; tests use `prunelab.study.testing.FakeBackend`
(no model, instant) so that resumption, statistics and the report are tested in seconds.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

from prunelab.errors import PrunelabError
from prunelab.study.plan import CompressionPoint, TaskInfo
from prunelab.study.recipe import Recipe


class Backend(Protocol):
    def versions(self) -> dict: ...
    def check(self, recipe: Recipe) -> list[tuple[str, str]]: ...  # (yaml path, problem)
    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]: ...
    def uses_calibration(self, method: str) -> bool: ...
    def load(self, model: str) -> Any: ...
    def model_info(self, handle: Any) -> dict: ...
    def reset(self, handle: Any) -> None: ...  # back to the dense weights
    def compress(self, handle: Any, point: CompressionPoint) -> dict: ...
    def perplexity(self, handle: Any, source: str, seqlen: int, n_windows: int) -> float: ...
    def evaluate(self, handle: Any, task: TaskInfo, limit: int | None, seed: int,
                 batch_size: int) -> tuple[list[dict], dict]: ...
    def estimate(self, recipe: Recipe, model: str, point: CompressionPoint,
                 tasks: list[TaskInfo]) -> tuple[float, float]: ...  # (compress s, eval s)


class _Handle:
    """A loaded model plus a copy of its dense weights, restored before each compression
    (cheaper than reloading from disk)."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.dense = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
        self.dirty = False


class PrunelabBackend:
    """The real thing: zoo models, registered methods, the task suite and evaluation engine."""

    def versions(self) -> dict:
        from prunelab.api import versions

        return versions()

    def check(self, recipe: Recipe) -> list[tuple[str, str]]:
        from prunelab.methods.base import make_method
        from prunelab.methods.masks import parse_pattern
        from prunelab.tasks.registry import get_tasks

        problems = []
        for i, comp in enumerate(recipe.compressions):
            try:
                method = make_method(comp.method, comp.options)
                if comp.patterns and not method.supports_nm:
                    problems.append((f"compressions[{i}].patterns",
                                     f"method {comp.method} does not support N:M patterns"))
            except PrunelabError as exc:
                where = "options" if "option" in exc.problem else "method"
                problems.append((f"compressions[{i}].{where}", exc.problem))
            if comp.method == "magnitude-band":
                problems.append((f"compressions[{i}].method",
                                 "use the band_probe section for magnitude-band sweeps"))
            for j, pattern in enumerate(comp.patterns):
                try:
                    parse_pattern(pattern)
                except PrunelabError as exc:
                    problems.append((f"compressions[{i}].patterns[{j}]", exc.problem))
        for i, selector in enumerate(recipe.tasks):
            try:
                for task in get_tasks([selector]):
                    task.size  # noqa: B018 - loads and validates the data now, not mid-run
            except PrunelabError as exc:
                problems.append((f"tasks[{i}]", exc.problem))
        for i, model in enumerate(recipe.models):
            problem = _model_problem(model)
            if problem:
                problems.append((f"models[{i}]", problem))
        return problems

    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]:
        from prunelab.tasks.local import is_spec_path
        from prunelab.tasks.registry import get_tasks, register

        tasks = get_tasks(selectors)
        if any(is_spec_path(s) for s in selectors):
            for task in tasks:  # tasks from local spec files: findable by name from now on
                register(task)
        return [TaskInfo(t.name, t.family, t.axis, t.level, t.level_rank, t.chance, t.size,
                         t.kind) for t in tasks]

    def uses_calibration(self, method: str) -> bool:
        from prunelab.methods.base import Statistic, make_method

        return make_method(method).statistic is not Statistic.NONE

    def load(self, model: str) -> _Handle:
        from prunelab.zoo.models import load_model

        return _Handle(load_model(model))

    def model_info(self, handle: _Handle) -> dict:
        from prunelab.zoo.models import DEQUANTIZED_CAVEAT

        loaded = handle.loaded
        dequantized = bool(getattr(loaded, "dequantized", loaded.info.get("dequantized", False)))
        params = sum(p.numel() for p in loaded.model.parameters())
        return {"name": loaded.name, "dequantized": dequantized, "parameters": params,
                "architecture": type(loaded.model).__name__,
                "caveat": DEQUANTIZED_CAVEAT if dequantized else None}

    def reset(self, handle: _Handle) -> None:
        if handle.dirty:
            handle.loaded.model.load_state_dict(handle.dense)
            handle.dirty = False

    def compress(self, handle: _Handle, point: CompressionPoint) -> dict:
        from prunelab.api import prune
        from prunelab.data.corpora import CalibrationConfig

        calibration = None
        if point.calibration is not None:
            calibration = CalibrationConfig(**dict(point.calibration), seed=point.seed)
        handle.dirty = True
        result = prune(handle.loaded, point.method, None if point.pattern else point.sparsity,
                       pattern=point.pattern, calibration=calibration, progress=False,
                       **dict(point.options))
        record = result.to_dict()
        record.pop("layers", None)  # per-layer detail is in the pruning engine's own output
        return record

    def perplexity(self, handle: _Handle, source: str, seqlen: int, n_windows: int) -> float:
        from prunelab.api import perplexity

        return perplexity(handle.loaded, source, seqlen, n_windows)

    def evaluate(self, handle: _Handle, task: TaskInfo, limit: int | None, seed: int,
                 batch_size: int) -> tuple[list[dict], dict]:
        from prunelab.evaluate.runner import evaluate

        if limit is not None and task.size is not None:
            limit = min(limit, task.size)  # a small level is used whole
        results = evaluate(handle.loaded, [task.name], limit=limit, seed=seed,
                           batch_size=batch_size, progress=False)
        summary = results.summary()[0]
        return [example_row(ex.to_dict()) for ex in results.examples], summary

    def estimate(self, recipe: Recipe, model: str, point: CompressionPoint,
                 tasks: list[TaskInfo]) -> tuple[float, float]:
        return rough_estimate(recipe, model, point, tasks)


def example_row(record: dict) -> dict:
    """The store's view of one ExampleResult: a value and weight the statistics can resample.

    Accuracy-like metrics: value = correct (0/1 or F1), weight 1. Rolling log-likelihood:
    value = nats of the text, weight = its bytes, so sum(value)/sum(weight) is nats per byte.
    """
    if record.get("metric") == "bits_per_byte":
        value, weight = -float(record["loglik"]), float(record["n_bytes"])
    else:
        value, weight = record.get("correct"), 1.0
    return {"example_id": str(record.get("example_id")), "value": value, "weight": weight,
            "margin": record.get("margin"), "data": record}


def _model_problem(model: str) -> str | None:
    from pathlib import Path

    from prunelab.zoo.models import ZOO

    if model in ZOO or Path(model).expanduser().is_dir():
        return None
    return f"unknown model {model!r}: use one of {', '.join(ZOO)} or a local model directory"


# -- rough time estimates for --dry-run ---------------------------------------------------------

# Measured here: a 512-token forward of a 135M-parameter model takes about 0.9 s on 2 cores,
# i.e. about 1.3e-11 s per parameter-token. Everything below scales from that, with constants
# fitted to single-thread CPU times of smollm2-135m measured on this machine (2026-11).
SECONDS_PER_PARAM_TOKEN = 1.3e-11
# Pruning wall time in dense forward passes over the calibration set (sequential pruning needs
# two passes per block), plus SparseGPT's Hessian work, which grows with the weights.
PRUNE_PASSES = {"wanda": 2.5, "sparsegpt": 3.0}
SPARSEGPT_SECONDS_PER_MPARAM = 0.1
MAGNITUDE_SECONDS_PER_MPARAM = 0.06
# Tokens scored per item (MC choices are packed after one shared prompt).
EVAL_TOKENS_PER_ITEM = {"mc": 60, "generate": 400, "rolling": 100}


def _params(model: str) -> float:
    from prunelab.zoo.models import ZOO

    spec = ZOO.get(model)
    match = re.fullmatch(r"([\d.]+)\s*([MB])", spec.params) if spec else None
    if not match:
        return 135e6
    return float(match.group(1)) * (1e6 if match.group(2) == "M" else 1e9)


def rough_estimate(recipe: Recipe, model: str, point: CompressionPoint,
                   tasks: list[TaskInfo]) -> tuple[float, float]:
    per_token = SECONDS_PER_PARAM_TOKEN * _params(model)
    compress = 2.0  # restoring weights, magnitude sorting
    mparams = _params(model) / 1e6
    if point.calibration is not None:
        tokens = recipe.calibration.n_samples * recipe.calibration.seqlen
        compress += PRUNE_PASSES.get(point.method, 3.0) * tokens * per_token
        if point.method == "sparsegpt":
            compress += SPARSEGPT_SECONDS_PER_MPARAM * mparams
    elif not point.is_dense:
        compress += MAGNITUDE_SECONDS_PER_MPARAM * mparams  # sorting every matrix
    evaluate = 0.0
    for task in tasks:
        n = task.size or 100
        if recipe.eval.limit is not None:
            n = min(n, recipe.eval.limit)
        evaluate += n * EVAL_TOKENS_PER_ITEM.get(task.kind, 200) * per_token
    if recipe.perplexity:  # measured right after compressing
        compress += recipe.perplexity.n_windows * recipe.perplexity.seqlen * per_token
    return compress, evaluate


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
