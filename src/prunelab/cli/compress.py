"""`prunelab prune | quantize | transfer | transfer-encoder`: compress a model and save it.

prune, quantize and transfer share one flow (`Compression`, run by `compress_and_save`):
check the arguments, load, compress, save, print a summary. Each command checks its own
arguments first, then fills in what is its own: the work, the provenance it saves, the lines
it prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from prunelab import defaults
from prunelab.checks import (CHECKPOINT_FORMATS, SUPPORTED_BITS, check_bits,
                             check_compact_pattern, check_dtype_name, check_format_name,
                             check_group_size, check_new_dir, check_output_file)
from prunelab.prune_request import check_prune_request
from prunelab.cli.common import (COMPRESS_PPL, DTYPE_HELP, PPL_HELP, PRUNE_DEVICE_HELP,
                                 TRUST_HELP, app, option_pairs, placement, size_line)
from prunelab.data.calibration import CalibrationConfig
from prunelab.errors import PrunelabError
from prunelab.method_catalogue import METHOD_CATALOGUE, check_options, method_shape

if TYPE_CHECKING:
    from prunelab.zoo.models import LoadedModel


# What `prune` writes: dense safetensors, or compact sparse matrices (packed integer codes are
# `quantize`'s).
PRUNE_FORMATS = ("dequantized", "compact")


def _nothing(loaded: LoadedModel) -> None:
    return None


@dataclass
class Compression:
    """One compress-and-save run, as a command fills it in (after checking its arguments)."""

    model: str
    out: Path
    compress: Callable[[LoadedModel], Any]  # the work on the loaded model; returns its result
    summary: Callable[[Any], list[str]]  # lines printed once saved, before perplexity and path
    # Provenance to save: (the PruneResult or None, extra prunelab.json fields).
    provenance: Callable[[Any], tuple[Any, dict]] = field(default=lambda result: (result, {}))
    prepare: Callable[[LoadedModel], None] = _nothing  # checks and moves needing the model
    perplexity_as: str | None = None  # measure before and after, naming the result so
    format: str = CHECKPOINT_FORMATS[0]
    saved_note: str = ""
    trust_remote_code: bool = False
    dtype: Any = "fp32"  # what the model is loaded, computed and saved in
    # The same work streamed from the model's shards (prunelab.streaming), given `prepare`;
    # None where the command cannot stream. Used with --stream, or when the weights exceed
    # the memory available.
    streamed: Callable[[Callable[[LoadedModel], Any]], Any] | None = None
    stream: bool = False


STREAM_HELP = ("read, compress and write one block at a time from the model's safetensors "
               "shards (models larger than memory); chosen by itself when the weights exceed "
               "the memory available")


def _should_stream(run: Compression) -> bool:
    if run.streamed is None:
        return False
    if run.stream:
        return True
    from prunelab.streaming import note, weights_exceed_memory
    from prunelab.zoo.models import resolve

    target, _ = resolve(run.model)
    if isinstance(target, Path) and weights_exceed_memory(target):
        note(f"the weights of {run.model} exceed the memory available now: streaming them "
             "block by block (as with --stream)")
        return True
    return False


def _stream_and_save(run: Compression) -> None:
    """compress_and_save, streamed: the output is written block by block by the work itself;
    perplexity, when asked, is measured streamed too, before and after."""
    from prunelab.paths import write_json_atomic
    from prunelab.streaming import stream_perplexity
    from prunelab.zoo.provenance import PROVENANCE_FILE

    source, ppl_seqlen, windows = COMPRESS_PPL
    result = run.streamed(run.prepare)  # refusals (disk, shards, method) come before any pass
    for line in run.summary(result):
        typer.echo(line)
    if run.perplexity_as:
        before = stream_perplexity(run.model, source, ppl_seqlen, windows, progress=True,
                                   trust_remote_code=run.trust_remote_code)
        after = stream_perplexity(run.out, source, ppl_seqlen, windows, progress=True)
        record = json.loads((run.out / PROVENANCE_FILE).read_text())
        record["perplexity"] = {"source": source, "seqlen": ppl_seqlen, "windows": windows,
                                "dense": before, run.perplexity_as: after}
        write_json_atomic(run.out / PROVENANCE_FILE, record)
        typer.echo(f"perplexity ({source}, {windows} x {ppl_seqlen}, streamed): dense "
                   f"{before:.2f} -> {run.perplexity_as} {after:.2f}")
    typer.echo(f"saved to {run.out} (streamed){run.saved_note}")


def compress_and_save(run: Compression) -> None:
    """load -> prepare -> (dense perplexity) -> compress -> (perplexity) -> save -> summary."""
    from prunelab import api
    from prunelab.zoo.models import load_model

    if _should_stream(run):
        _stream_and_save(run)
        return
    loaded = load_model(run.model, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
    run.prepare(loaded)
    before = api.dense_perplexity(loaded, *COMPRESS_PPL, progress=True) if run.perplexity_as \
        else None
    result = run.compress(loaded)
    after = api.perplexity(loaded, *COMPRESS_PPL, progress=True) if run.perplexity_as else None
    saved, extra = run.provenance(result)
    source, ppl_seqlen, windows = COMPRESS_PPL
    if run.perplexity_as:
        extra = {**extra, "perplexity": {"source": source, "seqlen": ppl_seqlen,
                                         "windows": windows, "dense": before.value,
                                         run.perplexity_as: after}}
    api.save(loaded, run.out, saved, extra=extra or None, format=run.format)
    for line in run.summary(result):
        typer.echo(line)
    if run.perplexity_as:
        cached = " (cached)" if before.cached else ""
        typer.echo(f"perplexity ({source}, {windows} x {ppl_seqlen}): dense {before.value:.2f}"
                   f"{cached} -> {run.perplexity_as} {after:.2f}")
    typer.echo(f"saved to {run.out}{run.saved_note}")


@app.command()
def prune(
    model: str = typer.Argument(..., help="zoo name (see `prunelab models`) or local model dir"),
    out: Path = typer.Option(..., "--out", help="directory to write the pruned model to"),
    method: str = typer.Option(defaults.PRUNE_METHOD, help="pruning method (see `prunelab "
                               "methods`)"),
    sparsity: Optional[float] = typer.Option(None, help="fraction to remove, in [0, 1)"),
    pattern: Optional[str] = typer.Option(None, help="N:M pattern, e.g. 2:4 (keep 2 of 4)"),
    calib_source: str = typer.Option(defaults.CALIBRATION_SOURCE,
                                     help="calibration text: name or file"),
    calib_samples: int = typer.Option(defaults.CALIBRATION_SAMPLES,
                                      help="number of calibration windows"),
    seqlen: int = typer.Option(defaults.CALIBRATION_SEQLEN, help="tokens per calibration window"),
    seed: int = typer.Option(defaults.CALIBRATION_SEED, help="seed for drawing calibration "
                             "windows"),
    option: Optional[list[str]] = typer.Option(None, help="method option KEY=VALUE (repeatable)"),
    format: str = typer.Option(CHECKPOINT_FORMATS[0], "--format",
                               help="dequantized (dense safetensors) or compact (each pruned "
                                    "matrix as its kept weights and a mask: smaller on disk)"),
    ppl: bool = typer.Option(True, help=PPL_HELP),
    stream: bool = typer.Option(False, "--stream", help=STREAM_HELP),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    dtype: str = typer.Option(defaults.DTYPE, help=DTYPE_HELP),
    device: Optional[str] = typer.Option(None, help=PRUNE_DEVICE_HELP),
) -> None:
    """Prune MODEL and save it (safetensors + prunelab.json)."""
    check_dtype_name(dtype)
    check_format_name(format)
    if format not in PRUNE_FORMATS:
        raise PrunelabError(f"prune writes --format {' or '.join(PRUNE_FORMATS)}, not {format}",
                            "write packed integer codes with `prunelab quantize --format "
                            "compressed-tensors`")
    if format == "compact":
        check_compact_pattern(pattern)
    options = option_pairs(option)
    calibration = CalibrationConfig(calib_source, calib_samples, seqlen, seed)
    check_prune_request(method, sparsity, pattern, calibration, options, out=out)
    where, torch_dtype = placement(device, dtype)
    from prunelab import api

    args = api.check_prune_args(method, sparsity, pattern, calibration, options, out=out)

    def summary(result) -> list[str]:
        lines = [f"{method} {result.pattern or f'{result.sparsity:.0%}'}: achieved sparsity "
                 f"{result.overall_sparsity:.4f} over {len(result.layers)} layers "
                 f"in {result.seconds:.1f} s"]
        if result.model_size:
            lines.append(size_line(result.model_size["before"], result.model_size["after"],
                                   None))
        return lines

    if stream and format != CHECKPOINT_FORMATS[0]:
        raise PrunelabError(f"--stream writes the {CHECKPOINT_FORMATS[0]} format, not {format}",
                            "drop --format (and `prunelab pack` the output), or drop --stream")
    if stream:
        from prunelab.streaming import check_streamable

        check_streamable(args.method)

    def streamed(prepare):
        from prunelab.streaming import stream_prune

        return stream_prune(model, out, method, sparsity, pattern=pattern,
                            calibration=calibration, trust_remote_code=trust_remote_code,
                            prepare=prepare, dtype=torch_dtype, **options)

    compress_and_save(Compression(
        model, out, trust_remote_code=trust_remote_code, dtype=torch_dtype,
        prepare=lambda loaded: api.check_model_fit(loaded, args, calibration_text=True),
        compress=lambda loaded: api.prune(loaded, method, sparsity, pattern=pattern,
                                          calibration=calibration, device=where, **options),
        summary=summary, perplexity_as="pruned" if ppl else None, format=format,
        saved_note=f" ({format})" if format != CHECKPOINT_FORMATS[0] else "",
        stream=stream, streamed=streamed if format == CHECKPOINT_FORMATS[0] else None))


def _group_size(text: str) -> str:
    """"none", "channel" or "-1" mean one grid per output channel."""
    return "none" if text.strip().lower() in ("none", "channel", "per-channel", "-1") else text


@app.command()
def quantize(
    model: str = typer.Argument(..., help="zoo name (see `prunelab models`) or local "
                                "model dir"),
    out: Path = typer.Option(..., "--out", help="directory to write the quantized model to"),
    method: str = typer.Option(defaults.QUANT_METHOD, help="rtn or gptq (see `prunelab "
                               "methods`)"),
    bits: int = typer.Option(defaults.QUANT_BITS, help="bits per weight: " + ", ".join(
        map(str, reversed(SUPPORTED_BITS[1:]))) + f" or {SUPPORTED_BITS[0]}"),
    group_size: Optional[str] = typer.Option(None, help="input columns per grid (32, 64, "
                                             "128, a divisor of the width), or none for per "
                                             "channel; default: the largest of 128, 64, 32 "
                                             "dividing every layer width"),
    symmetric: Optional[bool] = typer.Option(
        None, "--symmetric/--asymmetric", help="grid symmetric about zero (no zero point), or "
        "with a zero point; default: symmetric with --format compressed-tensors (what "
        "transformers loads), asymmetric otherwise", show_default=False),
    act_order: bool = typer.Option(False, help="GPTQ: columns by decreasing diag(H), "
                                   "with static groups"),
    format: str = typer.Option(CHECKPOINT_FORMATS[0], "--format",
                               help="dequantized (fp32 safetensors), compressed-tensors "
                                    "(packed int, what vLLM reads) or compact (kept codes and "
                                    "a mask: for pruned models)"),
    calib_source: str = typer.Option(defaults.CALIBRATION_SOURCE, help="calibration text"),
    calib_samples: int = typer.Option(defaults.CALIBRATION_SAMPLES,
                                      help="number of calibration windows"),
    seqlen: int = typer.Option(defaults.CALIBRATION_SEQLEN, help="tokens per calibration window"),
    seed: int = typer.Option(defaults.CALIBRATION_SEED, help="seed for drawing calibration "
                             "windows"),
    option: Optional[list[str]] = typer.Option(None, help="other method option KEY=VALUE"),
    ppl: bool = typer.Option(True, help=PPL_HELP),
    stream: bool = typer.Option(False, "--stream", help=STREAM_HELP + "; dequantized format "
                                "only"),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    dtype: str = typer.Option(defaults.DTYPE, help=DTYPE_HELP),
    device: Optional[str] = typer.Option(None, help=PRUNE_DEVICE_HELP),
) -> None:
    """Quantize MODEL's weights (RTN or GPTQ) and save it."""
    check_dtype_name(dtype)
    if symmetric is None:  # transformers cannot load a packed zero point (quant_export)
        symmetric = format == "compressed-tensors"
    # Without --group-size, the size is chosen once the model's widths are known (prepare).
    chosen_later = group_size is None
    options = {"bits": str(bits),
               "group_size": str(defaults.QUANT_GROUP_SIZE) if chosen_later
               else _group_size(group_size), "symmetric": str(symmetric)}
    if act_order:
        options["act_order"] = "true"
    for key, value in option_pairs(option).items():
        if key in options:
            raise PrunelabError(f"--option {key} repeats a flag of `quantize`",
                                f"give it once, as --{key.replace('_', '-')}")
        options[key] = value
    shape = method_shape(method)
    if not shape.quantizes:
        raise PrunelabError(f"method {method} does not quantize",
                            "use --method rtn or gptq (prune, or prune and quantize with "
                            "sparsegpt --option bits=4, with `prunelab prune`)")
    calibration = CalibrationConfig(calib_source, calib_samples, seqlen, seed)
    check_prune_request(method, None, None, calibration, options, out=out)
    given = check_options(method, options, shape.options, METHOD_CATALOGUE)
    check_bits(given["bits"], "quantization")  # as the quantizers' config will, with torch
    check_group_size(given["group_size"], "quantization")
    check_format_name(format)
    where, torch_dtype = placement(device, dtype)
    from prunelab import api
    from prunelab.quant_export import (ASYMMETRIC_PACKED_NOTE, check_format,
                                       check_model_for_format)

    args = api.check_prune_args(method, None, None, calibration, options, out=out)
    check_format(format, options)
    checked = {"args": args}

    def prepare(loaded) -> None:
        check_model_for_format(loaded.model, format)
        if chosen_later:
            from prunelab.methods.quant import group_size_line
            from prunelab.methods.rtn import fitting_group_size

            fitting = fitting_group_size(loaded.model)
            options["group_size"] = "none" if fitting is None else str(fitting)
            checked["args"] = api.check_prune_args(method, None, None, calibration, options)
            typer.echo(group_size_line(fitting))
        api.check_model_fit(loaded, checked["args"], calibration_text=True)

    def summary(result) -> list[str]:
        config = checked["args"].method.config
        grid = f"g{config.group_size}" if config.group_size else "per channel"
        kind = " symmetric" if config.symmetric else ""
        lines = [f"{method} {config.bits}-bit {grid}{kind}: {len(result.quantized)} layers in "
                 f"{result.seconds:.1f} s"]
        if format == "compressed-tensors" and not config.symmetric:
            lines.append(ASYMMETRIC_PACKED_NOTE)
        return lines

    if stream and format != CHECKPOINT_FORMATS[0]:
        raise PrunelabError(f"--stream writes the {CHECKPOINT_FORMATS[0]} format, not {format}",
                            f"drop --format, or drop --stream (the model must then fit in "
                            "memory)")

    def streamed(_prepare):
        from prunelab.streaming import stream_prune

        def prepare_and_choose(loaded):
            prepare(loaded)
            return options  # the group size chosen from the model's widths

        return stream_prune(model, out, method, calibration=calibration,
                            trust_remote_code=trust_remote_code, prepare=prepare_and_choose,
                            dtype=torch_dtype, **options)

    compress_and_save(Compression(
        model, out, trust_remote_code=trust_remote_code, prepare=prepare, dtype=torch_dtype,
        compress=lambda loaded: api.prune(loaded, method, calibration=calibration,
                                          device=where, **options),
        summary=summary, perplexity_as="quantized" if ppl else None, format=format,
        saved_note=f" ({format})", stream=stream,
        streamed=streamed if format == CHECKPOINT_FORMATS[0] else None))


@app.command()
def transfer(
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
    dtype: str = typer.Option(defaults.DTYPE, help=DTYPE_HELP),
) -> None:
    """Fine-tune MODEL in a Junk DNA transfer setting and save it."""
    check_dtype_name(dtype)
    if mask_from is not None and method is not None:
        raise PrunelabError("give either --method or --mask-from, not both",
                            "drop one of them")
    check_new_dir(out)
    where, torch_dtype = placement(device, dtype)
    from prunelab import api
    from prunelab.recover.loop import TrainConfig
    from prunelab.recover.mask_source import check_mask_source
    from prunelab.recover.run import TransferPlan
    from prunelab.recover.run import transfer as run_transfer
    from prunelab.recover.transfer import masks_from_directory
    from prunelab.tasks.registry import get_tasks

    plan = TransferPlan(setting, method, sparsity,
                        pattern, {}, train_on, trainable.split("+"), lora_rank, masked_lora,
                        TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, warmup=warmup,
                                    max_steps=max_steps, seed=seed))
    plan.check(masks_given=mask_from is not None)
    if setting != "dense" and method is not None and not pattern and sparsity == 0:
        raise PrunelabError(f"--setting {setting} at sparsity 0 prunes nothing: it would be a "
                            "dense fine-tune", "give a sparsity above 0, or --setting dense")
    if method is not None and setting != "dense":
        api.check_prune_args(method, None if pattern else sparsity, pattern, None, {})
    tasks = [t for t in train_on if not t.startswith("text:")]
    if tasks:
        get_tasks(tasks)  # unknown tasks fail before the model loads
    # a directory that was never pruned would make a "sparse" run a dense fine-tune
    source = check_mask_source(mask_from) if mask_from is not None else None

    def prepare(loaded) -> None:
        if where is not None:
            loaded.model.to(where)

    def compress(loaded) -> dict:
        masks = masks_from_directory(loaded.model, mask_from) if mask_from is not None else None
        return run_transfer(loaded, plan, eval_limit=eval_limit, eval_seed=eval_seed,
                            masks=masks, mask_source=source)

    def summary(record: dict) -> list[str]:
        return [f"{setting} transfer on {', '.join(train_on)}: {record['steps']} steps, final "
                f"loss {record['final_loss']:.4f}, {record['trainable_fraction']:.2%} of "
                f"parameters trained; masked weights {record.get('masked_weights', 0)}, of "
                f"them nonzero now {record.get('masked_nonzero', 0)}"]

    compress_and_save(Compression(model, out, compress=compress, summary=summary,
                                  prepare=prepare, dtype=torch_dtype,
                                  provenance=lambda record: (None, {"transfer": record})))


@app.command("transfer-encoder")
def transfer_encoder(
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
    out: Optional[str] = typer.Option(None, "--out", help="write the result (with every test "
                                       "item's correctness) as JSON here"),
    device: Optional[str] = typer.Option(None, help="train there, e.g. cuda (default: the CPU)"),
) -> None:
    """Fine-tune an encoder with a new head in a transfer setting; print test accuracy.

    Not a `Compression`: it saves no model, only the result (the mask is drawn inside the run).
    """
    if out is not None and Path(out).is_file():
        raise PrunelabError(f"{out} already exists", "choose a new --out")
    check_output_file(out, "--out", "result.json")
    from prunelab.api import resolve_device
    from prunelab.evaluate.metrics import wilson
    from prunelab.paths import write_json_atomic
    from prunelab.recover.encoder import encoder_transfer
    from prunelab.recover.loop import TrainConfig
    from prunelab.recover.transfer import check_setting
    from prunelab.tasks.classification import CLASSIFICATION_TASKS

    check_setting(setting)
    where = resolve_device(device)
    if task not in CLASSIFICATION_TASKS:
        raise PrunelabError(f"unknown classification task {task!r}",
                            f"use one of {', '.join(CLASSIFICATION_TASKS)}")
    train = TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed).validate()
    record = encoder_transfer(model, task, setting, sparsity=sparsity, method=method,
                              adequacy=adequacy, n_train=n_train, n_test=n_test, train=train,
                              device=where)
    low, high = wilson(sum(record["correct"]), len(record["correct"]))
    typer.echo(f"{task} {setting} {sparsity:.0%}: accuracy {record['accuracy']:.3f} "
               f"[{low:.3f}, {high:.3f}] on {record['test_items']} held-out items, trained on "
               f"{record['train_items']} ({record['steps']} steps, {record['seconds']:.0f} s)")
    if out is not None:
        write_json_atomic(out, record)
