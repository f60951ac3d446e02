"""The encoder track of the Junk DNA paper's transfer experiments (its GLUE side): an encoder
with a new classification head, pruned at the pre-trained checkpoint, fine-tuned in a transfer
setting on a classification task, and scored on a held-out test split.

Tasks are BIG-bench classification tasks with a fixed label set and thousands of rows
(`CLASSIFICATION_TASKS`). Splits are deterministic: items ranked by a seeded hash of their
ids; the first `n_test` are the test split, the next `n_train` the training pool. Data
adequacy trains on the first share of the pool, so the 10% subset is inside the 25% one, and
every adequacy level is tested on the same held-out items."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.recover.loop import TrainConfig, fine_tune
from prunelab.recover.transfer import TransferSetting, check_setting
from prunelab.tasks.base import Item, stable_hash

# name -> (BIG-bench task, subtask folder or None)
CLASSIFICATION_TASKS = {
    "multiemo-en": ("multiemo", "all_sentence_en"),
    "formal_fallacies": ("formal_fallacies_syllogisms_negation", None),
    "hyperbaton": ("hyperbaton", None),
    "winowhy": ("winowhy", None),
    "strategyqa": ("strategyqa", None),
}


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


def load_classifier(source: str, num_labels: int, seed: int):
    """(model, tokenizer): the encoder with a new classification head seeded by `seed`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prunelab.zoo.models import resolve

    target, _ = resolve(source)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(target, num_labels=num_labels,
                                                               dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(target)


def encode(tokenizer, items: list[Item], max_length: int = 128) -> list[dict]:
    return [{**tokenizer(item.input, truncation=True, max_length=max_length),
             "label": item.gold[0]} for item in items]


def collate(tokenizer):
    def batch(examples: list[dict]) -> dict[str, torch.Tensor]:
        padded = tokenizer.pad([{k: v for k, v in e.items() if k != "label"} for e in examples],
                               return_tensors="pt")
        padded["labels"] = torch.tensor([e["label"] for e in examples])
        return dict(padded)

    return batch


def classification_loss(model, batch) -> torch.Tensor:
    return model(**batch).loss


@torch.no_grad()
def correct(model, tokenizer, items: list[Item], batch_size: int = 64) -> np.ndarray:
    """1/0 per test item: is the head's top label the gold one?"""
    model.eval()
    out = []
    examples = encode(tokenizer, items)
    gather = collate(tokenizer)
    for start in range(0, len(examples), batch_size):
        batch = gather(examples[start:start + batch_size])
        labels = batch.pop("labels")
        out.append((model(**batch).logits.argmax(-1) == labels).numpy())
    return np.concatenate(out).astype(float)


def encoder_transfer(source: str, task: str, setting: str, *, sparsity: float = 0.0,
                     method: str = "magnitude-global", adequacy: float = 1.0,
                     n_train: int = 2000, n_test: int = 500, train: TrainConfig | None = None,
                     progress: bool = True, loaded_model=None, items=None) -> dict:
    """Prune `source`'s encoder (its blocks' linear layers) at `sparsity` with `method` (global
    magnitude, the paper's choice for encoders), fine-tune it with a new head in `setting`, and
    score the test split. `loaded_model` = (model, tokenizer) and `items` replace the zoo
    model and the task's BIG-bench data (tests)."""
    from prunelab.api import prune
    from prunelab.recover.run import _prunable_weights, _restore
    from prunelab.zoo.models import LoadedModel

    check_setting(setting)
    train = (train or TrainConfig(batch_size=32)).validate()
    data = split(task, n_train, n_test, adequacy=adequacy, items=items)
    model, tokenizer = loaded_model or load_classifier(source, len(data.labels), train.seed)
    masks: dict = {}
    if setting != "dense":
        if not 0 < sparsity < 1:
            raise PrunelabError(f"setting {setting} needs a sparsity in (0, 1), got {sparsity}",
                                "give --sparsity")
        saved = _prunable_weights(model) if setting == "freeze" else None
        wrapped = LoadedModel(model=model, tokenizer=tokenizer, name=source, path=None, info={})
        masks = prune(wrapped, method, sparsity, keep_masks=True, progress=False).masks
        if saved is not None:
            _restore(model, saved)
    for p in model.parameters():
        p.requires_grad_(True)
    holder = TransferSetting(setting, model, masks)
    result = fine_tune(model, encode(tokenizer, data.train), collate(tokenizer),
                       classification_loss, train, setting=holder, progress=progress)
    scores = correct(model, tokenizer, data.test)
    return {"task": task, "setting": setting, "sparsity": sparsity if setting != "dense" else 0.0,
            "method": method if setting != "dense" else None, "adequacy": adequacy,
            "train_items": len(data.train), "test_items": len(data.test),
            "accuracy": float(scores.mean()), "correct": scores.tolist(),
            "steps": result.steps, "seconds": round(result.seconds, 2),
            "final_loss": result.losses[-1], **holder.summary()}
