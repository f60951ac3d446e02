"""Training examples for causal-LM fine-tuning, from the suite's own tasks.

A task's training split is every item the evaluation does not select (`Task.select(limit,
seed)` picks the test items by a seeded hash of their ids, the same ids at every level of a
paired family), so nothing a model is tested on is ever trained on. An example is the task's
prompt followed by the gold answer, as the evaluation engine encodes them; the loss counts
the answer's tokens only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate.runner import encode_context, encode_continuation, pad_id
from prunelab.tasks.base import Task

IGNORE = -100  # label of a token the loss skips (transformers' convention)


@dataclass(frozen=True)
class LMExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def training_items(task: Task, eval_limit: int | None, eval_seed: int):
    """The task's items minus those its evaluation selects."""
    if task.kind == "rolling":
        raise PrunelabError(f"task {task.name} scores text, it has no answers to train on",
                            "fine-tune on a multiple-choice or generation task")
    tested = {item.id for item in task.select(eval_limit, eval_seed)} if eval_limit else None
    if tested is None:
        raise PrunelabError(f"task {task.name} is evaluated on all its items, so it has no "
                            "training split", "give the evaluation a limit (eval.limit)")
    return [item for item in task.items if item.id not in tested]


def lm_examples(loaded, task: Task, *, eval_limit: int | None, eval_seed: int,
                max_items: int | None = None, min_items: int = 1) -> list[LMExample]:
    items = training_items(task, eval_limit, eval_seed)
    if max_items is not None:
        items = items[:max_items]
    if len(items) < min_items:
        raise PrunelabError(f"task {task.name} leaves {len(items)} items for training after "
                            f"its {eval_limit} test items", "lower eval.limit or pick another task")
    out = []
    for item in items:
        prompt = task.prompt(item, eval_seed)
        context = encode_context(loaded, prompt)
        answer = encode_continuation(loaded, prompt, task.template.continuation(item.answer))
        ids = (context + answer)[-loaded.max_length:]
        labels = ([IGNORE] * len(context) + answer)[-loaded.max_length:]
        out.append(LMExample(tuple(ids), tuple(labels)))
    return out


TEXT_PREFIX = "text:"  # train_on "text:SOURCE": language modelling on a text (PERP's setup)


def text_examples(loaded, source: str, *, n_samples: int = 256, seqlen: int = 256,
                  seed: int = 0) -> list[LMExample]:
    """Seeded random windows of a text source (a name from `prunelab.data` or a file), every
    token a target: the plain language-modelling loss PERP retrains with."""
    from prunelab.data.corpora import CalibrationConfig, calibration_windows

    windows = calibration_windows(loaded, CalibrationConfig(source, n_samples, seqlen, seed))
    return [LMExample(tuple(row), tuple(row)) for row in windows.tolist()]


def collate_lm(pad: int):
    """Right-padded batches of `LMExample`s: input_ids, attention_mask, labels."""
    def collate(examples: list[LMExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[row, :len(e.labels)] = torch.tensor(e.labels)
            mask[row, :len(e.input_ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def pad_token(loaded) -> int:
    return pad_id(loaded)
