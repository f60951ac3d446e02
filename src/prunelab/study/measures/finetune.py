"""The encoder track's evaluation: each `finetune` task level fine-tunes the encoder with a new
head on the level's share of the training pool, in the transfer setting its compression left
(dense when none), then scores the level's held-out items (recipe `eval.finetune`: the
training settings). Its fine-tuning record is stored per point (kind "training")."""

from __future__ import annotations

import math

from prunelab.study.measures import Measure, register_measure
from prunelab.study.stages import DEFERRED_TRANSFER

TRAINING = "training"  # the kind of its record in the store's `measures` table


@register_measure
class FinetuneEvaluation(Measure):
    name = "finetune"
    scope = "point"
    point_records = (TRAINING,)

    def applies(self, task) -> bool:
        return task.kind == "finetune"

    def run(self, backend, handle, config, work=None) -> tuple[list[dict], dict]:
        return finetune_level(handle, work.task, config.limit, config.seed,
                              config.finetune or {}, backend.device)

    def fake(self, backend, handle, config, work=None) -> tuple[list[dict], dict]:
        return backend.evaluate(handle, work.task, config.limit, config.seed,
                                config.batch_size)

    def cost(self, recipe, config, point, per_token, params, task=None) -> float:
        """Train on the level's share of the pool, then score its held-out items."""
        from prunelab.recover.loop import TrainConfig
        from prunelab.study.estimate import TRAIN_TOKENS_PER_EXAMPLE, train_step_seconds
        from prunelab.tasks.classification import FINETUNE_TRAIN

        train = TrainConfig(**{"batch_size": 32, **(config.finetune or {})})
        items = math.ceil(FINETUNE_TRAIN * float(task.level) / 100)
        steps = train.max_steps or train.epochs * -(-items // train.batch_size)
        n_test = min(task.size or 500, config.limit or task.size or 500)
        return (steps * train_step_seconds(train.batch_size, per_token, params)
                + n_test * TRAIN_TOKENS_PER_EXAMPLE * per_token)


def finetune_level(handle, task, limit: int | None, seed: int, finetune: dict,
                   device) -> tuple[list[dict], dict]:
    """Fine-tune and score one `finetune` level on the handle's (compressed) encoder."""
    from prunelab.evaluate.results import EvalResults, ExampleResult
    from prunelab.recover.encoder import encoder_transfer
    from prunelab.recover.loop import TrainConfig
    from prunelab.study.backend import example_row
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
        train=TrainConfig(**fields), progress=False, data=data, device=device)
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
    summary[TRAINING] = {k: record[k] for k in (
        "setting", "sparsity", "method", "train_items", "steps", "seconds", "final_loss",
        "masked_weights", "masked_nonzero") if k in record}
    return [example_row(ex.to_dict()) for ex in examples], summary
