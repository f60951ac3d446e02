"""`evaluate(loaded, tasks)`: plan every task (prompts, tokens, length checks), then score.

Everything that can be wrong with the input (unknown task, bad task file, a limit larger
than a task, a prompt longer than the model's context) is found while planning, before the
model runs, so a bad run fails in seconds and writes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from prunelab import defaults
from prunelab.errors import PrunelabError
from prunelab.evaluate.metrics import GENERATION_SCORERS, first_line
from prunelab.evaluate.results import EvalResults, ExampleResult
from prunelab.evaluate.scoring import (Group, ScoreCache, generate_and_score, rolling_windows,
                                       score_groups)
from prunelab.tasks.base import Item, Task, split_whitespace
from prunelab.tasks.registry import get_tasks

MC_SCORES = ("mean", "sum")


@dataclass
class Plan:
    task: Task
    items: list[Item]
    groups: list[Group] = field(default_factory=list)  # mc: one per item; generate: gold answer
    prompts: list[list[int]] = field(default_factory=list)  # generate
    windows: list[list[tuple[list[int], list[int]]]] = field(default_factory=list)  # rolling


def prefix_id(loaded) -> int:
    tok = loaded.tokenizer
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if prefix is None:
        raise PrunelabError(f"the tokenizer of {loaded.name} has neither BOS nor EOS",
                            "use a tokenizer with a BOS or EOS token")
    return prefix


def pad_id(loaded) -> int:
    tok = loaded.tokenizer
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def encode_context(loaded, text: str) -> list[int]:
    ids = loaded.encode(text)
    if loaded.add_bos or not ids:
        ids = [prefix_id(loaded)] + ids
    return ids


def encode_continuation(loaded, context: str, continuation: str) -> list[int]:
    """The continuation's tokens as they fall in the whole text (as lm-eval splits them):
    encode context + continuation and drop as many tokens as the context alone has."""
    n_context = len(loaded.encode(context))
    return loaded.encode(context + continuation)[n_context:]


def _too_long(task: Task, item: Item, length: int, limit: int, model: str) -> PrunelabError:
    return PrunelabError(
        f"task {task.name}, item {item.id}: the prompt needs {length} tokens but {model} "
        f"takes at most {limit}",
        "use fewer shots, fewer distractor paragraphs, shorter fields in a local task file, or a "
        "model with a longer context")


def check_prompted(task: Task) -> None:
    """Refuse a task this engine cannot score: a `finetune` level is trained, not prompted."""
    if task.kind == "finetune":
        raise PrunelabError(f"task {task.name} is scored by fine-tuning an encoder on its "
                            "training split, not by prompting a model",
                            "use it in a study with an encoder (recipes/transfer-encoder.yaml) "
                            "or run `prunelab transfer-encoder`")


def plan_task(loaded, task: Task, limit: int | None, seed: int) -> Plan:
    check_prompted(task)
    items = task.select(limit, seed)
    plan = Plan(task, items)
    max_length = loaded.max_length
    for item in items:
        if task.kind == "rolling":
            plan.windows.append(rolling_windows(loaded.encode(item.text), prefix_id(loaded),
                                                max_length))
            continue
        prompt = task.prompt(item, seed)
        if task.kind == "mc":
            pieces = [split_whitespace(prompt, task.template.continuation(c)) for c in item.choices]
            context = encode_context(loaded, pieces[0][0])
            continuations = [encode_continuation(loaded, ctx, cont) for ctx, cont in pieces]
            if any(not c for c in continuations):
                raise PrunelabError(f"task {task.name}, item {item.id}: a choice encodes to no "
                                    "tokens", "remove empty choices from the task data")
            longest = len(context) + max(len(c) for c in continuations)
            if longest > max_length:
                raise _too_long(task, item, longest, max_length, loaded.name)
            plan.groups.append(Group(context, continuations))
        else:
            context = encode_context(loaded, prompt.rstrip(" "))
            if len(context) + task.max_new_tokens > max_length:
                raise _too_long(task, item, len(context) + task.max_new_tokens, max_length,
                                loaded.name)
            plan.prompts.append(context)
            gold_prompt, gold = split_whitespace(prompt, task.template.continuation(item.targets[0]))
            gold_ids = encode_continuation(loaded, gold_prompt, gold)
            if gold_ids and len(context) + len(gold_ids) <= max_length:
                plan.groups.append(Group(encode_context(loaded, gold_prompt), [gold_ids]))
            else:
                plan.groups.append(None)  # type: ignore[arg-type]
    return plan


def evaluate(loaded, tasks: list[str] | str, *, limit: int | None = None, seed: int = 0,
             batch_size: int = defaults.EVAL_BATCH_SIZE, progress: bool = True,
             mc_score: str | None = None, packing: bool | str = "auto",
             scores: ScoreCache | None = None) -> EvalResults:
    """Score `tasks` (selectors: family, family:level, task name, or spec file) on a model.

    limit: at most this many items per task level, chosen by a seeded hash of item ids (so
      every level of a family gets the same items). seed: also seeds the demonstrations.
    batch_size: continuations (MC) or prompts (generation) per forward pass.
    mc_score: decide multiple choice by "mean" log-prob per token or by the "sum"; both are
      kept either way. None (default): each task's own choice, which is "mean" (SmolLM2
      splits numbers into digits, so sums favour short distractors) except where a task
      says otherwise (multiemo: "sum", its labels differ in token count).
    packing: score an item's choices in one packed row ("auto"), or one row per choice.
    scores: log-likelihoods already scored on this model as it stands (`score_together`);
      multiple-choice and rolling pairs found there are not scored again, new ones are kept.
    Returns every example's result; nothing is written (see EvalResults.to_jsonl).
    """
    from tqdm.auto import tqdm

    if mc_score is not None and mc_score not in MC_SCORES:
        raise PrunelabError(f"mc_score {mc_score!r} is not one of {MC_SCORES}", "use mean or sum")
    if batch_size < 1:
        raise PrunelabError(f"batch size must be positive, got {batch_size}", "pass 1 or more")
    task_list = get_tasks(tasks)
    plans = [plan_task(loaded, t, limit, seed) for t in task_list]  # all checks before any forward
    started = time.time()
    examples: list[ExampleResult] = []
    total = sum(len(p.items) for p in plans)
    with tqdm(total=total, unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        for plan in plans:
            bar.set_description(plan.task.name)
            examples += _run(loaded, plan, seed=seed, batch_size=batch_size,
                             mc_score=mc_score or plan.task.mc_score, packing=packing,
                             progress=bar.update, scores=scores)
    meta = {
        "model": loaded.name, "dequantized": bool(getattr(loaded, "dequantized", False)),
        "tasks": [t.name for t in task_list], "limit": limit, "seed": seed,
        "batch_size": batch_size, "mc_score": mc_score, "packing": packing,
        "max_length": loaded.max_length, "seconds": round(time.time() - started, 3),
    }
    return EvalResults(examples, meta)


def _base(task: Task, item: Item, seed: int) -> dict:
    return dict(task=task.name, family=task.family, axis=task.axis, level=task.level,
                level_rank=task.level_rank, example_id=item.id, metric=task.metric,
                shots=task.shots, seed=seed)


def score_together(loaded, tasks: list[tuple[str, int | None]], *, seed: int = 0,
                   batch_size: int = defaults.EVAL_BATCH_SIZE, packing: bool | str = "auto",
                   scores: ScoreCache) -> None:
    """Score the multiple-choice and rolling requests of several task levels in one pass into
    `scores` ((task, limit) pairs, as `evaluate` would plan them); `evaluate` with the same
    cache then finds them there. Levels sharing prompts (nested option sets) share the work,
    and batches fill across levels. Generation levels are left to `evaluate`."""
    groups: list[Group] = []
    for name, limit in tasks:
        for task in get_tasks([name]):
            if task.kind not in ("mc", "rolling"):
                continue
            plan = plan_task(loaded, task, limit, seed)
            groups += plan.groups if task.kind == "mc" else _rolling_groups(plan)
    if groups:
        scores.score(loaded.model, groups, batch_size=batch_size, pad_id=pad_id(loaded),
                     packing=packing)


def _rolling_groups(plan: Plan) -> list[Group]:
    return [Group(ctx, [cont]) for windows in plan.windows for ctx, cont in windows]


def _run(loaded, plan: Plan, *, seed: int, batch_size: int, mc_score: str, packing,
         progress, scores: ScoreCache | None = None) -> list[ExampleResult]:
    task, model = plan.task, loaded.model
    pad = pad_id(loaded)
    score = scores.score if scores is not None else score_groups
    if task.kind == "mc":
        sums = score(model, plan.groups, batch_size=batch_size, pad_id=pad,
                     packing=packing, progress=progress)
        return [_mc_result(task, item, group, s, seed, mc_score)
                for item, group, s in zip(plan.items, plan.groups, sums)]
    if task.kind == "rolling":
        flat = _rolling_groups(plan)
        sums = score(model, flat, batch_size=batch_size, pad_id=pad, packing=packing)
        out, k = [], 0
        bits_per_token = math.log2(_vocabulary(model))  # a uniform guess: the level's chance
        for item, windows in zip(plan.items, plan.windows):
            loglik = sum(s[0] for s in sums[k: k + len(windows)])
            k += len(windows)
            n_tokens, n_bytes = sum(len(c) for _, c in windows), len(item.text.encode("utf-8"))
            out.append(ExampleResult(**_base(task, item, seed), loglik=loglik,
                                     n_tokens=n_tokens, n_bytes=n_bytes,
                                     chance=n_tokens * bits_per_token / max(n_bytes, 1)))
        progress(len(plan.items))
        return out
    # generate
    # The gold answer is scored from generation's cache where its context is the prompt
    # itself (the usual case); any other gold is scored in a pass of its own.
    golds = [g.continuations[0] if g is not None and g.context == prompt else None
             for g, prompt in zip(plan.groups, plan.prompts)]
    new_tokens, cached_sums = generate_and_score(
        model, loaded.tokenizer, plan.prompts, golds, max_new_tokens=task.max_new_tokens,
        batch_size=batch_size, pad_id=pad, progress=progress)
    apart = [g for g, cached in zip(plan.groups, cached_sums) if g is not None and cached is None]
    apart_sums = iter(score_groups(model, apart, batch_size=batch_size, pad_id=pad,
                                   packing=packing)) if apart else iter(())
    out = []
    for item, prompt, group, tokens, cached in zip(plan.items, plan.prompts, plan.groups,
                                                   new_tokens, cached_sums):
        text = first_line(loaded.tokenizer.decode(tokens, skip_special_tokens=True))
        scores = {name: fn(text, item.targets) for name, fn in GENERATION_SCORERS.items()}
        gold_logprob = None
        if group is not None:
            total = cached if cached is not None else next(apart_sums)[0]
            gold_logprob = total / len(group.continuations[0])
        out.append(ExampleResult(
            **_base(task, item, seed), prediction=text, target=list(item.targets),
            correct=scores[task.metric], chance=0.0, scores=scores, gold_logprob=gold_logprob,
            prompt_tokens=len(prompt)))
    return out


def _vocabulary(model) -> int:
    """How many tokens the model's output layer ranks."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _mc_result(task: Task, item: Item, group: Group, sums: list[float], seed: int,
               mc_score: str) -> ExampleResult:
    lengths = [len(c) for c in group.continuations]
    means = [s / n for s, n in zip(sums, lengths)]
    decide = means if mc_score == "mean" else sums
    chosen = max(range(len(decide)), key=lambda i: (decide[i], -i))  # first best on ties
    best_gold = max(decide[i] for i in item.gold)
    others = [decide[i] for i in range(len(decide)) if i not in item.gold]
    margin = best_gold - max(others) if others else None
    target = item.choices[item.gold[0]] if len(item.gold) == 1 else [item.choices[i] for i in item.gold]
    return ExampleResult(
        **_base(task, item, seed), prediction=item.choices[chosen], target=target,
        correct=float(chosen in item.gold), margin=margin, choices=list(item.choices),
        choice_scores=means,
        choice_scores_sum=sums, choice_tokens=lengths, chance=len(item.gold) / len(item.choices),
        mc_score=mc_score,
        prompt_tokens=len(group.context))
