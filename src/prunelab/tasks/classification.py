"""Classification tasks for the encoder track of the transfer experiments (the Junk DNA
paper's GLUE side): BIG-bench classification data with a fixed label set and thousands of rows
(`CLASSIFICATION_TASKS`), deterministic train/test splits, and, for a study, one `finetune`
family per task whose levels are data adequacy (`prunelab.recover.encoder` fine-tunes and
scores them).

Splits are deterministic: items ranked by a seeded hash of their ids; the first `n_test` are
the test split, the next `n_train` the training pool. Data adequacy trains on the first share
of the pool, so the 10% subset is inside the 25% one, and every adequacy level is tested on
the same held-out items."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunelab.errors import PrunelabError
from prunelab.tasks.base import Item, Task, stable_hash

# name -> (BIG-bench task, subtask folder or None)
CLASSIFICATION_TASKS = {
    "multiemo-en": ("multiemo", "all_sentence_en"),
    "formal_fallacies": ("formal_fallacies_syllogisms_negation", None),
    "hyperbaton": ("hyperbaton", None),
    "winowhy": ("winowhy", None),
    "strategyqa": ("strategyqa", None),
}


# In a study, each classification task is a family of `finetune` levels: the share of the
# training pool trained on (data adequacy; less data = harder), every level tested on the same
# held-out split (so levels are paired item by item).
FINETUNE_ADEQUACY = (1.0, 0.75, 0.5, 0.25, 0.1)
FINETUNE_TRAIN, FINETUNE_TEST = 2000, 500
FINETUNE_PREFIX = "finetune-"


@dataclass
class Split:
    task: str
    labels: tuple[str, ...]
    train: list[Item]
    test: list[Item]


def classification_items(task: str) -> list[Item]:
    from prunelab.tasks.loaders import bigbench_mc
    from prunelab.tasks.suite import _bb

    if task not in CLASSIFICATION_TASKS:
        raise PrunelabError(f"unknown classification task {task!r}",
                            f"use one of {', '.join(CLASSIFICATION_TASKS)}")
    name, folder = CLASSIFICATION_TASKS[task]
    return bigbench_mc(_bb(name, folder) if folder else _bb(name))


def split(task: str, n_train: int, n_test: int, *, adequacy: float = 1.0,
          seed: int = 0, items: list[Item] | None = None) -> Split:
    if not 0 < adequacy <= 1:
        raise PrunelabError(f"data adequacy {adequacy} is not in (0, 1]",
                            "give the share of the training split to train on, e.g. 0.25")
    items = items if items is not None else classification_items(task)
    labels = items[0].choices
    if any(item.choices != labels or len(item.gold) != 1 for item in items):
        raise PrunelabError(f"task {task} does not have one fixed label set",
                            "use a classification task (see CLASSIFICATION_TASKS)")
    if n_train + n_test > len(items):
        raise PrunelabError(f"task {task} has {len(items)} items, fewer than {n_train} training "
                            f"+ {n_test} test", "ask for fewer items")
    ranked = sorted(items, key=lambda item: stable_hash(seed, task, "split", item.id))
    test, pool = ranked[:n_test], ranked[n_test:n_test + n_train]
    return Split(task, labels, pool[:max(1, math.ceil(adequacy * len(pool)))], test)


def finetune_split(task: str, adequacy: float = 1.0, items: list[Item] | None = None) -> Split:
    """The study's split of a classification task: FINETUNE_TEST held-out items, and a
    training pool of FINETUNE_TRAIN (or what the task has beyond the test items)."""
    items = items if items is not None else classification_items(task)
    return split(task, min(FINETUNE_TRAIN, len(items) - FINETUNE_TEST), FINETUNE_TEST,
                 adequacy=adequacy, items=items)


def finetune_tasks() -> list[Task]:
    """The encoder track's task levels: `finetune-TASK:PERCENT` for every classification task
    and adequacy level; the items are the held-out test split."""
    from prunelab.tasks.suite import BIGBENCH, MULTIEMO_LICENSE

    out = []
    for name, (bb_task, folder) in CLASSIFICATION_TASKS.items():
        for rank, adequacy in enumerate(FINETUNE_ADEQUACY):
            percent = round(adequacy * 100)
            out.append(Task(
                name=f"{FINETUNE_PREFIX}{name}:{percent}", family=f"{FINETUNE_PREFIX}{name}",
                axis="adequacy", level=percent, level_rank=rank, kind="finetune",
                loader=lambda name=name: finetune_split(name).test,
                license=MULTIEMO_LICENSE if bb_task == "multiemo" else "Apache-2.0 (BIG-bench)",
                source=f"{BIGBENCH}: {bb_task}" + (f"/{folder}" if folder else ""),
                description=f"{name}: fine-tune an encoder with a new head on {percent}% of the "
                            "training pool, score the held-out split", paired_levels=True,
                needs_bigbench=True))
    return out


def adequacy_of(task: Task) -> tuple[str, float]:
    """(classification task, share of the training pool) of a `finetune` level."""
    return task.family[len(FINETUNE_PREFIX):], float(task.level) / 100
