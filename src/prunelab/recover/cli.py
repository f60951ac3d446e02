"""`prunelab transfer` (a causal LM on the suite's tasks) and `prunelab transfer-encoder` (an
encoder with a new classification head): prune, or only mark, and fine-tune in a transfer
setting."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(name="transfer")(transfer_command)
    app.command(name="transfer-encoder")(encoder_command)


def transfer_command(
    model: str = typer.Argument(..., help="zoo name or local model dir (the pre-trained model)"),
    out: Path = typer.Option(..., "--out", help="directory to write the fine-tuned model to"),
    setting: str = typer.Option(..., help="dense | sparse | sparse-to-dense | freeze"),
    train_on: list[str] = typer.Option(..., "--train-on", help="task (family:level) to train on,"
                                       " or text:SOURCE for language modelling; repeatable"),
    method: Optional[str] = typer.Option(None, help="pruning method whose mask to use"),
    sparsity: Optional[float] = typer.Option(None, help="fraction to remove, in [0, 1)"),
    pattern: Optional[str] = typer.Option(None, help="N:M pattern, e.g. 2:4"),
    mask_from: Optional[Path] = typer.Option(None, help="take the mask (its zeros) from a "
                                             "directory written by `prunelab prune`"),
    eval_limit: int = typer.Option(200, help="test items per task kept out of training (the "
                                   "evaluation's --limit)"),
    eval_seed: int = typer.Option(0, help="the evaluation's seed (which items it tests)"),
    lr: float = typer.Option(2e-5, help="peak learning rate (AdamW, linear schedule)"),
    epochs: int = typer.Option(3, help="passes over the training items"),
    batch_size: int = typer.Option(16, help="examples per step"),
    warmup: float = typer.Option(0.06, help="share of steps warming up"),
    max_steps: Optional[int] = typer.Option(None, help="stop after this many steps"),
    seed: int = typer.Option(42, help="seed of the data order"),
    trainable: str = typer.Option("all", help="what trains: all, or biases/norms/head joined "
                                  "by '+' (PERP)"),
    lora_rank: Optional[int] = typer.Option(None, help="LoRA adapters of this rank on the "
                                            "pruned linears (PERP)"),
    masked_lora: bool = typer.Option(False, help="MaskLoRA: the adapters keep the mask"),
    device: Optional[str] = typer.Option(None, help="train there, e.g. cuda (default: the CPU)"),
) -> None:
    """Fine-tune MODEL in a Junk DNA transfer setting and save it."""
    from prunelab import api
    from prunelab.errors import PrunelabError
    from prunelab.recover.loop import TrainConfig
    from prunelab.recover.run import TransferPlan, transfer
    from prunelab.recover.transfer import masks_from_directory
    from prunelab.tasks.registry import get_tasks
    from prunelab.zoo.models import load_model

    if mask_from is not None and method is not None:
        raise PrunelabError("give either --method or --mask-from, not both",
                            "drop one of them")
    plan = TransferPlan(setting, method, sparsity,
                        pattern, {}, train_on, trainable.split("+"), lora_rank, masked_lora,
                        TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, warmup=warmup,
                                    max_steps=max_steps, seed=seed))
    plan.check(masks_given=mask_from is not None)
    where = api.resolve_device(device)
    if method is not None and setting != "dense":
        api.check_prune_args(method, None if pattern else sparsity, pattern, None, {})
    tasks = [t for t in train_on if not t.startswith("text:")]
    if tasks:
        get_tasks(tasks)  # unknown tasks fail before the model loads
    if out.exists():
        raise PrunelabError(f"output directory {out} already exists",
                            "choose a new --out, or remove the old one")
    loaded = load_model(model)
    if where is not None:
        loaded.model.to(where)
    masks = masks_from_directory(loaded.model, mask_from) if mask_from is not None else None
    record = transfer(loaded, plan, eval_limit=eval_limit, eval_seed=eval_seed, masks=masks)
    api.save(loaded, out, extra={"transfer": record})
    typer.echo(f"{setting} transfer on {', '.join(train_on)}: {record['steps']} steps, final "
               f"loss {record['final_loss']:.4f}, {record['trainable_fraction']:.2%} of "
               f"parameters trained; masked weights {record.get('masked_weights', 0)}, of "
               f"them nonzero now {record.get('masked_nonzero', 0)}")
    typer.echo(f"saved to {out}")


def encoder_command(
    model: str = typer.Argument("minilm-l6", help="an encoder: zoo name or local dir"),
    task: str = typer.Option("multiemo-en", help="classification task (see "
                             "prunelab.recover.encoder.CLASSIFICATION_TASKS)"),
    setting: str = typer.Option(..., help="dense | sparse | sparse-to-dense | freeze"),
    sparsity: float = typer.Option(0.0, help="fraction removed by global magnitude"),
    method: str = typer.Option("magnitude-global", help="pruning method for the mask"),
    adequacy: float = typer.Option(1.0, help="share of the training split to train on"),
    n_train: int = typer.Option(2000, help="training split size"),
    n_test: int = typer.Option(500, help="held-out test split size"),
    lr: float = typer.Option(2e-5, help="peak learning rate"),
    epochs: int = typer.Option(3, help="passes over the training items"),
    batch_size: int = typer.Option(32, help="examples per step"),
    seed: int = typer.Option(42, help="seed of the head and the data order"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result (with every test "
                                       "item's correctness) as JSON here"),
    device: Optional[str] = typer.Option(None, help="train there, e.g. cuda (default: the CPU)"),
) -> None:
    """Fine-tune an encoder with a new head in a transfer setting; print test accuracy."""
    from prunelab.errors import PrunelabError
    from prunelab.evaluate.metrics import wilson
    from prunelab.paths import write_json_atomic
    from prunelab.recover.encoder import encoder_transfer
    from prunelab.tasks.classification import CLASSIFICATION_TASKS
    from prunelab.recover.loop import TrainConfig
    from prunelab.recover.transfer import check_setting

    from prunelab.api import resolve_device

    check_setting(setting)
    where = resolve_device(device)
    if task not in CLASSIFICATION_TASKS:
        raise PrunelabError(f"unknown classification task {task!r}",
                            f"use one of {', '.join(CLASSIFICATION_TASKS)}")
    train = TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed).validate()
    if out is not None and out.exists():
        raise PrunelabError(f"{out} already exists", "choose a new --out")
    record = encoder_transfer(model, task, setting, sparsity=sparsity, method=method,
                              adequacy=adequacy, n_train=n_train, n_test=n_test, train=train,
                              device=where)
    low, high = wilson(sum(record["correct"]), len(record["correct"]))
    typer.echo(f"{task} {setting} {sparsity:.0%}: accuracy {record['accuracy']:.3f} "
               f"[{low:.3f}, {high:.3f}] on {record['test_items']} held-out items, trained on "
               f"{record['train_items']} ({record['steps']} steps, {record['seconds']:.0f} s)")
    if out is not None:
        write_json_atomic(out, record)
