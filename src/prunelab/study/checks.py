"""What a recipe's schema cannot see, checked before any model is loaded: methods and their
options, calibration files, tasks, models, each measure's own inputs, and that the encoder
and decoder tracks do not mix. Every problem is returned as (yaml path, problem)."""

from __future__ import annotations

from prunelab.errors import PrunelabError
from prunelab.study.models import is_encoder_model, model_problem
from prunelab.study.recipe import Recipe


def check_recipe(recipe: Recipe) -> list[tuple[str, str]]:
    from prunelab.study.measures import compression_measures

    missing = _bigbench_problem(recipe)
    if missing:
        return missing  # one line, not one per task and source that needs the same data
    problems = _compression_problems(recipe)
    problems += _task_problems(recipe)
    for measure in compression_measures():
        config = measure.config(recipe)
        if config is not None:
            problems += measure.check(config)
    for i, model in enumerate(recipe.models):
        problem = model_problem(model)
        if problem:
            problems.append((f"models[{i}]", problem))
    problems += track_problems(recipe)
    return problems


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _bigbench_problem(recipe: Recipe) -> list[tuple[str, str]]:
    """The recipe's task families and text sources that need BIG-bench data, as one problem,
    where that data cannot be had here."""
    from prunelab.data.bigbench import FIX, availability
    from prunelab.data.sources import TEXT_SOURCES
    from prunelab.tasks.registry import get_tasks

    needs = []
    for selector in recipe.tasks:
        try:
            needs += [t.family for t in get_tasks([selector]) if t.needs_bigbench]
        except PrunelabError:
            pass  # reported with the tasks
    needs += [s for s in _strings(recipe.model_dump())
              if s in TEXT_SOURCES and TEXT_SOURCES[s].needs_bigbench]
    if not needs:
        return []
    found = availability()
    if found.available:
        return []
    return [("recipe", f"{', '.join(dict.fromkeys(needs))} need BIG-bench data: {found.reason}; "
             f"{FIX}")]


def _compression_problems(recipe: Recipe) -> list[tuple[str, str]]:
    from prunelab.study.plan import check_compressions, expand, resolve_calibration

    problems = check_compressions(recipe)
    failed = {path for path, _ in problems}
    for i, comp in enumerate(recipe.compressions):
        if f"compressions[{i}]" in failed:
            continue
        seen = set()
        for stages, _ in expand(comp):
            for j, stage in enumerate(stages):
                # Checked against the calibration it would draw from, used or not: a recipe
                # naming a missing file is wrong either way.
                calibration = resolve_calibration(recipe, stage, lambda _: True)
                for problem in stage.problems(calibration):
                    if problem not in seen:
                        seen.add(problem)
                        where = f"compressions[{i}]" + (f".stages[{j}]" if comp.stages else "")
                        problems.append((where, problem))
    return problems


def _task_problems(recipe: Recipe) -> list[tuple[str, str]]:
    from prunelab.tasks.registry import get_tasks

    problems = []
    for i, selector in enumerate(recipe.tasks):
        try:
            for task in get_tasks([selector]):
                task.size  # noqa: B018 - loads and validates the data now, not mid-run
        except PrunelabError as exc:
            problems.append((f"tasks[{i}]", exc.problem))
    return problems


def track_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """The encoder track (an encoder model, `finetune` task levels, transfer stages that only
    choose a setting) and the decoder track do not mix."""
    from prunelab.tasks.registry import get_tasks

    try:
        kinds = {t.kind for t in get_tasks(list(recipe.tasks))}
    except PrunelabError:
        return []  # reported with the tasks
    problems = []
    for i, model in enumerate(recipe.models):
        encoder = is_encoder_model(model)
        if encoder and kinds != {"finetune"}:
            problems.append((f"models[{i}]", f"{model} is an encoder: it is scored by "
                             "fine-tuning on `finetune` task levels only (e.g. "
                             "finetune-multiemo-en), not on prompted tasks"))
        if encoder is False and "finetune" in kinds:
            problems.append((f"models[{i}]", f"{model} is a causal LM; `finetune` task levels "
                             "fine-tune an encoder (e.g. minilm-l6)"))
        problems += (_encoder_stage_problems(recipe) if encoder
                     else _decoder_stage_problems(recipe))
    return problems


def _decoder_stage_problems(recipe: Recipe) -> list[tuple[str, str]]:
    problems = []
    for j, comp in enumerate(recipe.compressions):
        for k, stage in enumerate(comp.base_stages()):
            if stage.get("kind") == "transfer" and not stage.get("train_on"):
                problems.append((f"compressions[{j}].stages[{k}]", "a transfer stage on a "
                                 "causal LM needs train_on: the tasks whose held-out items it "
                                 "trains on"))
    return problems


def _encoder_stage_problems(recipe: Recipe) -> list[tuple[str, str]]:
    problems = []
    for j, comp in enumerate(recipe.compressions):
        stages = comp.base_stages()
        if len(stages) != 1 or stages[0].get("kind") != "transfer":
            problems.append((f"compressions[{j}]", "with an encoder, each compression is one "
                             "transfer stage (the setting, its method and sparsity)"))
            continue
        if any(stages[0].get(k) for k in ("train", "lora_rank", "pattern", "train_on")) \
                or stages[0].get("trainable", ["all"]) != ["all"]:
            problems.append((f"compressions[{j}].stages[0]", "the encoder track trains every "
                             "weight of each finetune level on its own split with "
                             "eval.finetune: leave out train, train_on, trainable, lora_rank "
                             "and pattern"))
    return problems
