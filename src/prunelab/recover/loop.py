"""One fine-tuning loop for every track: seeded data order, AdamW, linear schedule with
warm-up, gradient clipping, a transfer setting's invariant around every step, and
checkpoints a killed run resumes from."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.arch import to_device
from prunelab.errors import PrunelabError
from prunelab.recover.transfer import TransferSetting


@dataclass
class TrainConfig:
    """The Junk DNA paper's defaults (AdamW, lr 2e-5, 3 epochs, no weight decay, 6% warm-up,
    linear decay); `max_steps` stops early (a quick recipe, a test)."""

    lr: float = 2e-5
    epochs: int = 3
    weight_decay: float = 0.0
    warmup: float = 0.06
    batch_size: int = 16
    max_grad_norm: float = 1.0
    seed: int = 42
    max_steps: int | None = None
    checkpoint_every: int = 200  # steps between checkpoints when a checkpoint path is given

    def validate(self) -> TrainConfig:
        problems = []
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            problems.append((f"learning rate {self.lr}", "give a learning rate above 0"))
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            problems.append((f"epochs {self.epochs}", "train for 1 epoch or more"))
        if not 0 <= self.warmup < 1:
            problems.append((f"warm-up share {self.warmup}", "give a share in [0, 1)"))
        if self.weight_decay < 0:
            problems.append((f"weight decay {self.weight_decay}", "give 0 or more"))
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append((f"batch size {self.batch_size}", "give 1 or more"))
        if self.max_steps is not None and self.max_steps < 1:
            problems.append((f"max_steps {self.max_steps}", "give 1 or more, or leave it out"))
        if problems:
            what, fix = problems[0]
            raise PrunelabError(f"fine-tuning: {what} is not allowed", fix)
        return self


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(repr=False)
    trainable: int
    total: int
    resumed_from: int = 0
    setting: dict = field(default_factory=dict)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / max(self.total, 1)


def linear_schedule(total_steps: int, warmup: float) -> Callable[[int], float]:
    warm = int(math.ceil(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def fine_tune(model: nn.Module, examples: Sequence[Any], collate: Callable[[list], Any],
              loss_of: Callable[[nn.Module, Any], torch.Tensor], config: TrainConfig, *,
              setting: TransferSetting | None = None, checkpoint: str | Path | None = None,
              progress: bool = True) -> TrainResult:
    """Train the parameters that require gradients on `examples` (batched by `collate`,
    scored by `loss_of(model, batch)`), holding `setting`'s invariant around every step.

    With `checkpoint`, the model, optimiser, schedule and step are saved there every
    `config.checkpoint_every` steps (written to a temporary file and renamed) and a run that
    finds one resumes from it; the file is removed when training ends. Batches are moved to
    the device the model's parameters are on."""
    config.validate()
    if not examples:
        raise PrunelabError("fine-tuning got no training examples",
                            "give a task with a training split")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PrunelabError("nothing to train: no parameter requires gradients",
                            "choose a trainable subset that exists in this model")
    device = params[0].device
    per_epoch = math.ceil(len(examples) / config.batch_size)
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 linear_schedule(total, config.warmup))
    step, losses = 0, []
    path = Path(checkpoint) if checkpoint is not None else None
    if setting is not None:
        setting.start()
    if path is not None and path.is_file():
        # loaded on the CPU: load_state_dict copies into the model's and the optimiser's own
        # devices (and keeps AdamW's step counters on the CPU, where it wants them)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config") != asdict(config):
            raise PrunelabError(f"{path} is a checkpoint of another training configuration",
                                "remove it or train with the configuration it was made with")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        # `setting.start()` above read the frozen values from the pre-trained weights, which
        # the checkpoint holds unchanged
        step, losses = int(state["step"]), list(state["losses"])
    resumed = step
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="fine-tuning", unit="step", disable=not progress)
    while step < total:
        epoch, position = divmod(step, per_epoch)
        # The order of an epoch depends only on the seed and the epoch, so a resumed run
        # sees the batches it would have seen.
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(position * config.batch_size, len(examples), config.batch_size):
            chosen = order[start:start + config.batch_size]
            batch = to_device(collate([examples[i] for i in chosen]), device)
            loss = loss_of(model, batch)
            if not bool(torch.isfinite(loss)):
                # Stopped here, not trained on: the settings' masks multiply by 0/1, and a
                # non-finite gradient times 0 is not 0.
                raise PrunelabError(f"fine-tuning diverged at step {step + 1}: the loss is "
                                    f"{float(loss.detach())}", "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if setting is not None:
                setting.before_step()
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            if setting is not None:
                setting.after_step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if path is not None and step % config.checkpoint_every == 0 and step < total:
                _save(path, model, optimizer, schedule, step, losses, config)
            if step >= total:
                break
    bar.close()
    model.eval()
    if path is not None and path.is_file():
        path.unlink()
    trainable = sum(p.numel() for p in params)
    return TrainResult(step, time.perf_counter() - started, losses, trainable,
                       sum(p.numel() for p in model.parameters()), resumed,
                       setting.summary() if setting is not None else {})


def _save(path: Path, model, optimizer, schedule, step, losses, config) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "step": step, "losses": losses,
                "config": asdict(config)}, temporary)
    os.replace(temporary, path)
