"""Prune (or only mark) and fine-tune a loaded causal LM in one of the transfer settings:
the Python API behind the study's transfer stage and `prunelab transfer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunelab.arch import named_prunable_layers
from prunelab.errors import PrunelabError
from prunelab.recover.data import (TEXT_PREFIX, collate_lm, lm_examples, lm_loss, pad_token,
                                   text_examples)
from prunelab.recover.loop import TrainConfig, fine_tune
from prunelab.recover.mask_source import mask_record
from prunelab.recover.perp import add_adapters, check_subsets, merge_adapters, select_trainable
from prunelab.recover.transfer import TransferSetting, check_setting


@dataclass
class TransferPlan:
    """What to do: the setting, the mask's source (a method at a sparsity or N:M pattern, or
    masks given), what trains, and on which tasks' training items."""

    setting: str
    method: str | None = None
    sparsity: float | None = None
    pattern: str | None = None
    options: dict = field(default_factory=dict)
    train_on: Sequence[str] = ()
    trainable: Sequence[str] = ("all",)
    lora_rank: int | None = None  # adapters on the pruned linears (PERP's LoRA)
    masked_lora: bool = False  # MaskLoRA: the adapters' update keeps the mask
    train: TrainConfig = field(default_factory=TrainConfig)
    max_items: int | None = None  # training items per task (all by default)

    def check(self, masks_given: bool = False) -> TransferPlan:
        check_setting(self.setting)
        check_subsets(self.trainable)
        self.train.validate()
        if not self.train_on:
            raise PrunelabError("no task to fine-tune on", "name one or more tasks to train on")
        if self.setting != "dense" and self.method is None and not masks_given:
            raise PrunelabError(f"setting {self.setting} needs a mask",
                                "give a pruning method and a sparsity or pattern, or a "
                                "pruned model directory to take the mask from")
        if self.masked_lora and not self.lora_rank:
            raise PrunelabError("MaskLoRA needs adapters", "give a LoRA rank")
        return self


def transfer(loaded, plan: TransferPlan, *, calibration=None, eval_limit: int | None = None,
             eval_seed: int = 0, masks: dict[str, torch.Tensor] | None = None,
             checkpoint: str | Path | None = None, progress: bool = True,
             mask_source: dict | None = None) -> dict:
    """Apply `plan` to `loaded` in place and return a record of it. The training items of each
    task are those its evaluation (`eval_limit`, `eval_seed`) does not test. With `masks`
    given, `mask_source` (from `check_mask_source`) says where they came from; the record
    keeps it with the masks' digest."""
    from prunelab.compress import prune
    from prunelab.tasks.registry import get_tasks

    plan.check(masks_given=masks is not None)
    texts = [t[len(TEXT_PREFIX):] for t in plan.train_on if t.startswith(TEXT_PREFIX)]
    names = [t for t in plan.train_on if not t.startswith(TEXT_PREFIX)]
    tasks = get_tasks(names) if names else []
    examples = [e for task in tasks for e in lm_examples(
        loaded, task, eval_limit=eval_limit, eval_seed=eval_seed, max_items=plan.max_items)]
    for source in texts:  # a text is not a task: it has no test items to keep out
        examples += text_examples(loaded, source, n_samples=plan.max_items or 256,
                                  seed=plan.train.seed)
    record: dict = {"setting": plan.setting, "train_on": list(plan.train_on),
                    "train_examples": len(examples)}
    if masks is not None and mask_source is not None:
        record["mask_source"] = mask_record(mask_source, masks)
    if plan.setting != "dense" and masks is None:
        # freeze zeroes nothing: the mask is computed on a copy of the weights' values and
        # the pre-trained values are put back
        saved = _prunable_weights(loaded.model) if plan.setting == "freeze" else None
        result = prune(loaded, plan.method, None if plan.pattern else plan.sparsity,
                       pattern=plan.pattern, calibration=calibration, progress=progress,
                       keep_masks=True, **plan.options)
        masks = result.masks
        record["pruned"] = {"method": plan.method, "sparsity": result.sparsity,
                            "pattern": result.pattern, "overall_sparsity":
                            result.to_dict().get("overall_sparsity")}
        if saved is not None:
            _restore(loaded.model, saved)
    setting = TransferSetting(plan.setting, loaded.model, masks or {})
    setting.start()
    select_trainable(loaded.model, plan.trainable if not plan.lora_rank else
                     [s for s in plan.trainable if s != "all"])
    if plan.lora_rank:
        add_adapters(loaded.model, list(masks or _linear_names(loaded.model)),
                     rank=plan.lora_rank, masked=plan.masked_lora)
    held = setting.held_trainable()
    result = fine_tune(loaded.model, examples, collate_lm(pad_token(loaded)), lm_loss,
                       plan.train, setting=setting, checkpoint=checkpoint, progress=progress)
    if plan.lora_rank:
        # a plain LoRA merge fills pruned weights in (masked_nonzero says how many); MaskLoRA's
        # does not
        merge_adapters(loaded.model)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    record.update({"steps": result.steps, "seconds": round(result.seconds, 2),
                   "final_loss": result.losses[-1] if result.losses else None,
                   # a weight the setting holds is not trained, though it has a gradient
                   "trainable": result.trainable - held,
                   "trainable_fraction": (result.trainable - held) / max(result.total, 1),
                   **setting.summary()})
    return record


def _prunable_weights(model) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach().clone()
            for name, layer in named_prunable_layers(model).items()}


@torch.no_grad()
def _restore(model, saved: dict[str, torch.Tensor]) -> None:
    for name, layer in named_prunable_layers(model).items():
        layer.weight.copy_(saved[name])


def _linear_names(model) -> list[str]:
    return list(named_prunable_layers(model))
