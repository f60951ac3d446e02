"""What the study runner asks of the rest of prunelab, in one small interface.

The runner never imports torch, the zoo, the methods or the evaluation engine directly: it talks
to a `Backend`. `PrunelabBackend` is the real one; tests use `prunelab.study.testing.FakeBackend`
(no model, instant) so that resumption, statistics and the report are tested in seconds.
"""

from __future__ import annotations

import copy
import math
import re
import time
from typing import Any, Protocol

from prunelab.errors import PrunelabError
from prunelab.study.plan import CompressionPoint, TaskInfo
from prunelab.study.recipe import Recipe
from prunelab.study.stages import DEFERRED_TRANSFER, Stage


class Backend(Protocol):
    def versions(self) -> dict: ...
    def check(self, recipe: Recipe) -> list[tuple[str, str]]: ...  # (yaml path, problem)
    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]: ...
    def uses_calibration(self, stage: Stage) -> bool: ...
    def load(self, model: str) -> Any: ...
    def model_info(self, handle: Any) -> dict: ...
    def reset(self, handle: Any) -> None: ...  # back to the dense model
    def compress(self, handle: Any, point: CompressionPoint) -> dict: ...
    def perplexity(self, handle: Any, source: str, seqlen: int, n_windows: int) -> float: ...
    def divergence(self, handle: Any, source: str, seqlen: int, n_windows: int) -> dict: ...
    def refusal(self, handle: Any, config: Any) -> dict: ...  # config: recipe.Refusal
    def evaluate(self, handle: Any, task: TaskInfo, limit: int | None, seed: int,
                 batch_size: int) -> tuple[list[dict], dict]: ...
    def estimate(self, recipe: Recipe, model: str, point: CompressionPoint,
                 tasks: list[TaskInfo]) -> tuple[float, float]: ...  # (compress s, eval s)


class _Handle:
    """A loaded model plus a pristine copy of the dense model, restored before each
    compression (cheaper than reloading from disk).

    When a stage changed the model's structure (structured pruning removes heads and
    channels, so shapes and the config change), the weights cannot be copied back into the
    old tensors: the model is then rebuilt from the pristine copy."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.pristine = copy.deepcopy(loaded.model)
        self.dirty = False
        self.dense_pass = None  # (divergence windows' key, windows, dense hidden states)

    def reset(self) -> None:
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
        from prunelab.api import resolve_device

        self.device = resolve_device(device)

    def versions(self) -> dict:
        from prunelab.api import versions

        found = versions()
        if self.device is not None and self.device.type != "cpu":
            found["device"] = self.device.type
        return found

    def check(self, recipe: Recipe) -> list[tuple[str, str]]:
        from prunelab.study.plan import check_compressions, expand, resolve_calibration
        from prunelab.tasks.registry import get_tasks

        problems = check_compressions(recipe)
        failed = {path for path, _ in problems}
        for i, comp in enumerate(recipe.compressions):
            if f"compressions[{i}]" in failed:
                continue
            seen = set()
            for stages, _ in expand(comp):
                for j, stage in enumerate(stages):
                    # Checked against the calibration it would draw from, used or not: a
                    # recipe naming a missing file is wrong either way.
                    calibration = resolve_calibration(recipe, stage, lambda _: True)
                    for problem in stage.problems(calibration):
                        if problem not in seen:
                            seen.add(problem)
                            where = f"compressions[{i}]" + (f".stages[{j}]" if comp.stages else "")
                            problems.append((where, problem))
        for i, selector in enumerate(recipe.tasks):
            try:
                for task in get_tasks([selector]):
                    task.size  # noqa: B018 - loads and validates the data now, not mid-run
            except PrunelabError as exc:
                problems.append((f"tasks[{i}]", exc.problem))
        if recipe.divergence is not None:
            from prunelab.api import check_perplexity_args

            d = recipe.divergence
            try:
                check_perplexity_args(d.source, d.seqlen, d.n_windows)
            except PrunelabError as exc:
                problems.append(("divergence", exc.problem))
        if recipe.refusal is not None:  # the request and template files, before any model
            from prunelab.evaluate.refusal import load_requests, load_templates

            for field, load in (("requests", load_requests), ("templates", load_templates),
                                ("benign", lambda p: load_requests(p, benign=True))):
                try:
                    load(getattr(recipe.refusal, field))
                except PrunelabError as exc:
                    problems.append((f"refusal.{field}", exc.problem))
            if recipe.refusal.judge is not None:
                problem = _model_problem(recipe.refusal.judge)
                if problem:
                    problems.append(("refusal.judge", problem))
        for i, model in enumerate(recipe.models):
            problem = _model_problem(model)
            if problem:
                problems.append((f"models[{i}]", problem))
        problems += _track_problems(recipe)
        return problems

    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]:
        from prunelab.tasks.local import is_spec_path
        from prunelab.tasks.registry import get_tasks, register

        tasks = get_tasks(selectors)
        if any(is_spec_path(s) for s in selectors):
            for task in tasks:  # tasks from local spec files: findable by name from now on
                register(task)
        return [TaskInfo(t.name, t.family, t.axis, t.level, t.level_rank, t.chance, t.size,
                         t.kind, t.content_digest, t.paired_levels) for t in tasks]

    def uses_calibration(self, stage: Stage) -> bool:
        return stage.needs_calibration()

    def load(self, model: str) -> _Handle:
        return _Handle(self._load(model))

    def _load(self, model: str):
        from prunelab.zoo.models import load_model

        loaded = load_model(model)
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
        records = [stage.run(handle.loaded, calibration, point.seed)
                   for stage, calibration in zip(point.stages, point.calibration)]
        if len(records) == 1:
            return records[0]
        return {"stages": records, **{k: records[-1][k] for k in ("overall_sparsity",)
                                      if k in records[-1]}}

    def perplexity(self, handle: _Handle, source: str, seqlen: int, n_windows: int) -> float:
        from prunelab.api import perplexity

        return perplexity(handle.loaded, source, seqlen, n_windows)

    def divergence(self, handle: _Handle, source: str, seqlen: int, n_windows: int) -> dict:
        """The compressed model against the pristine dense copy (`_Handle.pristine`)."""
        from prunelab.data.corpora import eval_windows
        from prunelab.evaluate.divergence import dense_hidden_states, windows_divergence

        key = (source, seqlen, n_windows)
        if handle.dense_pass is None or handle.dense_pass[0] != key:
            # The dense side computed once per model and reused by every compressed one.
            windows = eval_windows(handle.loaded, source, seqlen, n_windows)
            handle.dense_pass = (key, windows, dense_hidden_states(handle.pristine, windows))
        _, windows, hidden = handle.dense_pass
        return windows_divergence(handle.pristine, handle.loaded.model, windows,
                                  dense_hidden=hidden).to_dict()

    def refusal(self, handle: _Handle, config) -> dict:
        from prunelab.evaluate.refusal import evaluate_refusal, load_requests, load_templates

        judge = None
        if config.judge is not None:  # loaded once per study, not once per model judged
            if getattr(self, "_judge", (None, None))[0] != config.judge:
                self._judge = (config.judge, self._load(config.judge))
            judge = self._judge[1]
        result = evaluate_refusal(handle.loaded, load_requests(config.requests),
                                  load_templates(config.templates),
                                  load_requests(config.benign, benign=True),
                                  max_new_tokens=config.max_new_tokens,
                                  batch_size=config.batch_size, judge=judge)
        return {"summary": result.summary, "rows": result.rows}

    def evaluate(self, handle: _Handle, task: TaskInfo, limit: int | None, seed: int,
                 batch_size: int, finetune: dict | None = None) -> tuple[list[dict], dict]:
        from prunelab.evaluate.runner import evaluate

        if task.kind == "finetune":
            return self._finetune(handle, task, limit, seed, finetune or {})
        if limit is not None and task.size is not None:
            limit = min(limit, task.size)  # a small level is used whole
        results = evaluate(handle.loaded, [task.name], limit=limit, seed=seed,
                           batch_size=batch_size, progress=False)
        summary = results.summary()[0]
        return [example_row(ex.to_dict()) for ex in results.examples], summary

    def _finetune(self, handle: _Handle, task: TaskInfo, limit: int | None, seed: int,
                  finetune: dict) -> tuple[list[dict], dict]:
        """The encoder track: fine-tune the encoder with a new head on this level's share of
        the training pool, in the transfer setting its compression left (dense when none),
        and score the level's held-out items."""
        from prunelab.evaluate.results import EvalResults, ExampleResult
        from prunelab.recover.encoder import encoder_transfer
        from prunelab.recover.loop import TrainConfig
        from prunelab.tasks.classification import adequacy_of, finetune_split
        from prunelab.tasks.registry import get_tasks

        level = get_tasks([task.name])[0]
        name, adequacy = adequacy_of(level)
        plan = handle.loaded.info.get(DEFERRED_TRANSFER) or {"setting": "dense"}
        fields = {"batch_size": 32, **finetune}
        if plan.get("seed") is not None:
            fields["seed"] = plan["seed"]
        data = finetune_split(name, adequacy)
        data.test = level.select(min(limit, level.size) if limit else None, seed)
        loaded = handle.loaded
        record = encoder_transfer(
            str(loaded.path) if loaded.path else loaded.name, name, plan["setting"],
            sparsity=plan.get("sparsity") or 0.0, method=plan.get("method") or "magnitude-global",
            train=TrainConfig(**fields), progress=False, data=data, device=self.device)
        labels = record["labels"]
        examples = []
        for item, scores, ok in zip(data.test, record["logprobs"], record["correct"]):
            gold = item.gold[0]
            best_other = max(s for j, s in enumerate(scores) if j != gold)
            examples.append(ExampleResult(
                task=task.name, family=task.family, axis=task.axis, level=task.level,
                level_rank=task.level_rank, example_id=item.id, metric="accuracy",
                prediction=labels[max(range(len(scores)), key=scores.__getitem__)],
                target=labels[gold], correct=ok, margin=scores[gold] - best_other,
                choices=labels, choice_scores=scores, choice_scores_sum=scores,
                chance=1 / len(labels), mc_score="mean"))
        summary = EvalResults(examples).summary()[0]
        summary["training"] = {k: record[k] for k in (
            "setting", "sparsity", "method", "train_items", "steps", "seconds", "final_loss",
            "masked_weights", "masked_nonzero") if k in record}
        return [example_row(ex.to_dict()) for ex in examples], summary

    def estimate(self, recipe: Recipe, model: str, point: CompressionPoint,
                 tasks: list[TaskInfo]) -> tuple[float, float]:
        return rough_estimate(recipe, model, point, tasks)


def example_row(record: dict) -> dict:
    """The store's view of one ExampleResult: a value and weight the statistics can resample
    (sum(value)/sum(weight) is the level's score; see `prunelab.evaluate.metrics`)."""
    from prunelab.evaluate.metrics import get_metric

    value, weight = get_metric(record.get("metric", "accuracy")).example(record)
    return {"example_id": str(record.get("example_id")), "value": value, "weight": weight,
            "margin": record.get("margin"), "data": record}


def _is_encoder_model(model: str) -> bool | None:
    """Whether a recipe's model is an encoder (zoo kind, or a directory's config.json);
    None when that cannot be told without loading it."""
    import json
    from pathlib import Path

    from prunelab.zoo.models import ZOO

    if model in ZOO:
        return ZOO[model].kind == "encoder"
    config = Path(model).expanduser() / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    return not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def _track_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """The encoder track (an encoder model, `finetune` task levels, transfer stages that only
    choose a setting) and the decoder track do not mix."""
    from prunelab.tasks.registry import get_tasks

    try:
        kinds = {t.kind for t in get_tasks(list(recipe.tasks))}
    except PrunelabError:
        return []  # reported with the tasks
    problems = []
    for i, model in enumerate(recipe.models):
        encoder = _is_encoder_model(model)
        if encoder and kinds != {"finetune"}:
            problems.append((f"models[{i}]", f"{model} is an encoder: it is scored by "
                             "fine-tuning on `finetune` task levels only (e.g. "
                             "finetune-multiemo-en), not on prompted tasks"))
        if encoder is False and "finetune" in kinds:
            problems.append((f"models[{i}]", f"{model} is a causal LM; `finetune` task levels "
                             "fine-tune an encoder (e.g. minilm-l6)"))
        if not encoder:
            for j, comp in enumerate(recipe.compressions):
                for k, stage in enumerate(comp.base_stages()):
                    if stage.get("kind") == "transfer" and not stage.get("train_on"):
                        problems.append((f"compressions[{j}].stages[{k}]", "a transfer stage "
                                         "on a causal LM needs train_on: the tasks whose "
                                         "held-out items it trains on"))
            continue
        for j, comp in enumerate(recipe.compressions):
            stages = comp.base_stages()
            if len(stages) != 1 or stages[0].get("kind") != "transfer":
                problems.append((f"compressions[{j}]", "with an encoder, each compression is "
                                 "one transfer stage (the setting, its method and sparsity)"))
                continue
            if any(stages[0].get(k) for k in ("train", "lora_rank", "pattern", "train_on")) \
                    or stages[0].get("trainable", ["all"]) != ["all"]:
                problems.append((f"compressions[{j}].stages[0]", "the encoder track trains "
                                 "every weight of each finetune level on its own split with "
                                 "eval.finetune: leave out train, train_on, trainable, "
                                 "lora_rank and pattern"))
    return problems


def _model_problem(model: str) -> str | None:
    from pathlib import Path

    from prunelab.zoo.models import ZOO

    if model in ZOO or Path(model).expanduser().is_dir():
        return None
    return f"unknown model {model!r}: use one of {', '.join(ZOO)} or a local model directory"


# -- rough time estimates for --dry-run ---------------------------------------------------------

# Seconds per parameter-token of a forward pass on a 2-core CPU; everything below scales from
# it, with constants fitted to smollm2-135m's pruning and evaluation times on such a machine.
SECONDS_PER_PARAM_TOKEN = 1.3e-11
# Pruning wall time in dense forward passes over the calibration set (sequential pruning needs
# two passes per block), plus SparseGPT's Hessian work, which grows with the weights. The other
# methods are scaled from Wanda by their time ratios in bench/bench_methods.py: GBLM adds a
# backward pass per window, BESA a forward and backward of every block with its masks per
# window; the methods that take a `base` add their own work to the base's.
PRUNE_PASSES = {"wanda": 2.5, "sparsegpt": 3.0, "gblm": 7.0, "besa": 8.3, "wanda-variant": 2.6,
                "flap": 1.0, "seap": 1.0, "wanda-sp": 2.5}
WRAPPER_PASSES = {"owl": 2.5, "dsnot": 0.3, "sparsity-map": 0.0}
SPARSEGPT_SECONDS_PER_MPARAM = 0.1
MAGNITUDE_SECONDS_PER_MPARAM = 0.06
# Tokens scored per item (MC choices are packed after one shared prompt).
EVAL_TOKENS_PER_ITEM = {"mc": 60, "generate": 400, "rolling": 100}
# Fine-tuning: a step's forward and backward cost about three forwards of its tokens (a
# training example is a prompt and its answer), and AdamW touches every weight's value, grad
# and two moments once per step.
TRAIN_TOKENS_PER_EXAMPLE = 64
TRAIN_FORWARDS_PER_STEP = 3.0
OPTIMIZER_SECONDS_PER_PARAM = 5e-9


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
    for stage, calibration in zip(point.stages, point.calibration):
        method = getattr(stage, "method", stage.kind)
        if stage.kind == "transfer":
            compress += _fine_tuning_seconds(stage, per_token, _params(model))
        if calibration is not None:
            tokens = calibration["n_samples"] * calibration["seqlen"]
            passes = WRAPPER_PASSES.get(method, 0.0)
            if method in WRAPPER_PASSES:
                from prunelab.methods.wrapping import WrappingConfig

                method = stage.options.get("base", WrappingConfig().base)
            compress += (passes + PRUNE_PASSES.get(method, 3.0)) * tokens * per_token
            if method in ("sparsegpt", "gptq"):  # the same sweep over every column
                compress += SPARSEGPT_SECONDS_PER_MPARAM * mparams
        else:
            compress += MAGNITUDE_SECONDS_PER_MPARAM * mparams  # sorting every matrix
    evaluate = 0.0
    for task in tasks:
        if task.kind == "finetune":  # train on the level's share of the pool, then score
            evaluate += _finetune_seconds(recipe, task, per_token, _params(model))
            continue
        n = task.size or 100
        if recipe.eval.limit is not None:
            n = min(n, recipe.eval.limit)
        evaluate += n * EVAL_TOKENS_PER_ITEM.get(task.kind, 200) * per_token
    if recipe.perplexity:  # measured right after compressing
        compress += recipe.perplexity.n_windows * recipe.perplexity.seqlen * per_token
    if recipe.divergence and not point.is_dense:  # both models, one pass each
        compress += 2 * recipe.divergence.n_windows * recipe.divergence.seqlen * per_token
    if recipe.refusal:  # ~105 prompts of ~80 tokens, answered token by token (a cache helps)
        compress += 105 * (80 + 4 * recipe.refusal.max_new_tokens) * per_token
    return compress, evaluate


def _fine_tuning_seconds(stage, per_token: float, params: float) -> float:
    """A transfer stage's training time: its steps (max_steps, else epochs over the training
    items the evaluation leaves) times a step's forward, backward and optimiser update."""
    from prunelab.tasks.registry import get_tasks

    if not stage.train_on:  # the encoder track trains when its levels are evaluated
        return 0.0
    train = stage.train_config(None)
    steps = train.max_steps
    if steps is None:
        items = stage.max_items
        if items is None:
            items = 0
            for task in get_tasks(list(stage.train_on)):
                left = task.size - (stage.holdout_limit or 0)
                items += max(left, 0)
        steps = train.epochs * -(-items // train.batch_size)
    return steps * _train_step_seconds(train.batch_size, per_token, params)


def _train_step_seconds(batch_size: int, per_token: float, params: float) -> float:
    """One fine-tuning step: forward and backward over the batch, then the AdamW update."""
    return (TRAIN_FORWARDS_PER_STEP * batch_size * TRAIN_TOKENS_PER_EXAMPLE * per_token
            + OPTIMIZER_SECONDS_PER_PARAM * params)


def _finetune_seconds(recipe: Recipe, task: TaskInfo, per_token: float,
                      params: float) -> float:
    from prunelab.tasks.classification import FINETUNE_TRAIN
    from prunelab.recover.loop import TrainConfig

    train = TrainConfig(**{"batch_size": 32, **(recipe.eval.finetune or {})})
    items = math.ceil(FINETUNE_TRAIN * float(task.level) / 100)
    steps = train.max_steps or train.epochs * -(-items // train.batch_size)
    n_test = min(task.size or 500, recipe.eval.limit or task.size or 500)
    return (steps * _train_step_seconds(train.batch_size, per_token, params)
            + n_test * TRAIN_TOKENS_PER_EXAMPLE * per_token)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
