"""The task evaluation: each prompted task level scored on each compressed model, recipe
`eval:` (`prunelab.evaluate.runner`); its examples and summary make the point's rows."""

from __future__ import annotations

from prunelab.study.measures import Measure, register_measure

# Tokens scored per item (MC choices are packed after one shared prompt); other kinds: 200.
EVAL_TOKENS_PER_ITEM = {"mc": 60, "generate": 400, "rolling": 100}


@register_measure
class TaskEvaluation(Measure):
    name = "task"
    scope = "point"

    def applies(self, task) -> bool:
        return task.kind != "finetune"

    def run(self, backend, handle, config, work=None) -> tuple[list[dict], dict]:
        # The point's sibling levels on the same model, scored in one pass where the backend
        # can (shared prompts scored once, fuller batches); evaluate then reads them back.
        together = getattr(backend, "score_together", None)
        if together is not None and work is not None and len(work.together) > 1:
            together(handle, tuple(t for t in work.together if self.applies(t)), config.limit,
                     config.seed, config.batch_size)
        return backend.evaluate(handle, work.task, config.limit, config.seed,
                                config.batch_size)

    def cost(self, recipe, config, point, per_token, params, task=None) -> float:
        n = task.size or 100
        if config.limit is not None:
            n = min(n, config.limit)
        return n * EVAL_TOKENS_PER_ITEM.get(task.kind, 200) * per_token
