"""The encoder track of the Junk DNA paper's transfer experiments (its GLUE side): an encoder
with a new classification head, pruned at the pre-trained checkpoint, fine-tuned in a transfer
setting on a classification task, and scored on a held-out test split.

The tasks and their deterministic splits are in `prunelab.tasks.classification`; in a study
each of its `finetune` levels is fine-tuned here when it is evaluated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prunelab.arch import to_device
from prunelab.errors import PrunelabError
from prunelab.recover.loop import TrainConfig, fine_tune
from prunelab.recover.transfer import TransferSetting, check_setting
from prunelab.tasks.base import Item
from prunelab.tasks.classification import Split, split


_DECODER_HEADS = ("ForCausalLM", "LMHeadModel")


def is_encoder(model) -> bool:
    """Whether a model is an encoder (no causal LM head): the transfer study's encoder track."""
    return not type(model).__name__.endswith(_DECODER_HEADS)


def check_encoder_source(source: str | Path) -> None:
    """Refuse a causal LM given where an encoder is wanted, before it loads: a zoo model by its
    kind, a local directory by its config.json (its architectures, `is_decoder`, or a model type
    that is only ever a causal LM). A hub id is checked by `check_encoder_config` once its
    config is read."""
    import json

    from prunelab.zoo.models import ZOO

    text = str(source)
    if text in ZOO:
        if ZOO[text].kind != "encoder":
            raise _not_an_encoder(text, ZOO[text].architecture)
        return
    config = Path(text).expanduser() / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return  # a damaged config is refused, with its own line, when the model loads
        if isinstance(data, dict):
            check_encoder_config(text, data)


def check_encoder_config(source: str, config: dict) -> None:
    """Refuse a model whose config (as a dict) says it is a causal LM."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    decoder = [a for a in architectures if a.endswith(_DECODER_HEADS)]
    model_type = config.get("model_type")
    only_causal = (isinstance(model_type, str)
                   and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                   and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    if decoder or config.get("is_decoder") is True or only_causal:
        raise _not_an_encoder(source, decoder[0] if decoder else model_type or "a decoder")


def _not_an_encoder(source: str, architecture: str) -> PrunelabError:
    return PrunelabError(f"{source} is a causal language model ({architecture}), not an "
                         "encoder: transfer-encoder fine-tunes an encoder with a new "
                         "classification head",
                         "give an encoder such as minilm-l6, or fine-tune a causal LM with "
                         "`prunelab transfer`")


def load_classifier(source: str, num_labels: int, seed: int):
    """(model, tokenizer): the encoder with a new classification head seeded by `seed`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from prunelab.zoo.directory import check_model_directory
    from prunelab.zoo.models import resolve

    check_encoder_source(source)
    target, _ = resolve(source)
    if isinstance(target, Path):  # a damaged directory: one line, before transformers reads it
        check_model_directory(target)
    else:  # a hub id: its config says what it is before its weights load
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(target).to_dict()
        except (OSError, ValueError):
            config = {}  # unreadable: from_pretrained below says why, as for any model
        check_encoder_config(source, config)
    torch.manual_seed(seed)
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is meant to be missing from the checkpoint
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            target, num_labels=num_labels, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
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
def label_logprobs(model, tokenizer, items: list[Item], batch_size: int = 64) -> np.ndarray:
    """[items, labels] log-probabilities of the head's labels for each test item."""
    model.eval()
    out = []
    examples = encode(tokenizer, items)
    gather = collate(tokenizer)
    for start in range(0, len(examples), batch_size):
        batch = gather(examples[start:start + batch_size])
        batch.pop("labels")
        batch = to_device(batch, next(model.parameters()).device)
        out.append(torch.log_softmax(model(**batch).logits.float(), -1).cpu().numpy())
    return np.concatenate(out)


def correct(model, tokenizer, items: list[Item], batch_size: int = 64) -> np.ndarray:
    """1/0 per test item: is the head's top label the gold one?"""
    logprobs = label_logprobs(model, tokenizer, items, batch_size)
    gold = np.array([item.gold[0] for item in items])
    return (logprobs.argmax(-1) == gold).astype(float)


def encoder_transfer(source: str, task: str, setting: str, *, sparsity: float = 0.0,
                     method: str = "magnitude-global", adequacy: float = 1.0,
                     n_train: int = 2000, n_test: int = 500, train: TrainConfig | None = None,
                     progress: bool = True, loaded_model=None, items=None,
                     data: Split | None = None, device: str | torch.device | None = None
                     ) -> dict:
    """Prune `source`'s encoder (its blocks' linear layers) at `sparsity` with `method` (global
    magnitude, the paper's choice for encoders), fine-tune it with a new head in `setting`, and
    score the test split, on `device` (default: where the model is, the CPU for a zoo model).
    `loaded_model` = (model, tokenizer) and `items` replace the zoo model and the task's
    BIG-bench data (tests)."""
    from prunelab.compress import prune
    from prunelab.recover.run import _prunable_weights, _restore
    from prunelab.zoo.models import LoadedModel

    check_setting(setting)
    if loaded_model is None:
        check_encoder_source(source)  # before the task's data is read
    train = (train or TrainConfig(batch_size=32)).validate()
    data = data or split(task, n_train, n_test, adequacy=adequacy, items=items)
    model, tokenizer = loaded_model or load_classifier(source, len(data.labels), train.seed)
    if device is not None:
        model.to(device)
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
    logprobs = label_logprobs(model, tokenizer, data.test)
    scores = (logprobs.argmax(-1) == np.array([it.gold[0] for it in data.test])).astype(float)
    return {"labels": list(data.labels), "test_ids": [it.id for it in data.test],
            "logprobs": logprobs.tolist(), "task": task, "setting": setting, "sparsity": sparsity if setting != "dense" else 0.0,
            "method": method if setting != "dense" else None, "adequacy": adequacy,
            "train_items": len(data.train), "test_items": len(data.test),
            "accuracy": float(scores.mean()), "correct": scores.tolist(),
            "steps": result.steps, "seconds": round(result.seconds, 2),
            "final_loss": result.losses[-1], **holder.summary()}
