"""`prunelab ppl | eval | divergence | refusal | tasks`: measure a model, list the tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prunelab import defaults
from prunelab.checks import check_dtype_name, check_output_dir, check_output_file
from prunelab.data.checks import check_perplexity_args
from prunelab.cli.common import DEVICE_HELP, DTYPE_HELP, TRUST_HELP, app, load_placed, placement
from prunelab.errors import PrunelabError


STREAM_EVAL_HELP = ("read the model one block at a time from its safetensors shards, all "
                    "windows or items at once (models larger than memory)")


@app.command()
def ppl(
    model: str = typer.Argument(..., help="zoo name or local model directory"),
    source: str = typer.Option(defaults.EVAL_SOURCE, help="text: name or local file"),
    seqlen: int = typer.Option(defaults.EVAL_SEQLEN, help="tokens per window"),
    windows: int = typer.Option(defaults.EVAL_WINDOWS, help="number of non-overlapping windows"),
    stream: bool = typer.Option(False, "--stream", help=STREAM_EVAL_HELP),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    dtype: str = typer.Option(defaults.DTYPE, help=DTYPE_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
) -> None:
    """Perplexity of MODEL on non-overlapping windows of a text."""
    check_dtype_name(dtype)
    check_perplexity_args(source, seqlen, windows)
    where, torch_dtype = placement(device, dtype)
    from prunelab import api

    if stream:
        from prunelab.streaming import stream_perplexity

        value = stream_perplexity(model, source, seqlen, windows, progress=True,
                                  trust_remote_code=trust_remote_code, dtype=torch_dtype)
        typer.echo(f"perplexity {value:.3f} (streamed)  ({source}, {windows} windows x "
                   f"{seqlen} tokens)")
        return

    loaded = load_placed(model, where, torch_dtype, trust_remote_code)
    value, cached = api.dense_perplexity(loaded, source, seqlen, windows, progress=True)
    typer.echo(f"perplexity {value:.3f}{' (cached)' if cached else ''}  "
               f"({source}, {windows} windows x {seqlen} tokens)")


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="model name (see `prunelab models`) or a local model "
                                "directory"),
    tasks: str = typer.Option(..., "--tasks", "-t",
                              help="comma-separated: family (arithmetic), family:level "
                                   "(arithmetic:3), or a task spec file (my_task.yaml)"),
    limit: int | None = typer.Option(None, "--limit", "-n", help="at most this many items per "
                                     "task level"),
    out: str | None = typer.Option(None, "--out", "-o", help="write every example's result "
                                    "here (JSONL)"),
    summary_out: str | None = typer.Option(None, "--summary", help="write the per-level "
                                            "summary here (JSON)"),
    seed: int = typer.Option(0, help="seeds item selection (with --limit) and demonstrations"),
    batch_size: int = typer.Option(defaults.EVAL_BATCH_SIZE, "--batch-size", "-b",
                                   help="choices or prompts per forward pass"),
    mc_score: str | None = typer.Option(None, help="multiple-choice decision for every task: "
                                        "mean (log-prob per token) or sum; default: each "
                                        "task's own"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar with "
                                  "ETA"),
    dtype: str = typer.Option(defaults.DTYPE, help=DTYPE_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    stream: bool = typer.Option(False, "--stream", help=STREAM_EVAL_HELP + "; log-likelihood "
                                "tasks only"),
) -> None:
    """Evaluate MODEL on tasks; print a per-level table with 95% intervals."""
    check_dtype_name(dtype)
    check_output_file(out, "--out")
    check_output_file(summary_out, "--summary", "summary.json")
    from prunelab.tasks.registry import get_tasks

    chosen = get_tasks(tasks)  # unknown tasks and too-large limits fail before loading
    for task in chosen:
        task.select(limit, seed)
    if stream:
        from prunelab.checks import check_streamable_tasks

        check_streamable_tasks(chosen)
    from prunelab.evaluate.runner import check_prompted, evaluate
    from prunelab.paths import write_json_atomic

    for task in chosen:
        check_prompted(task)
    where, torch_dtype = placement(device, dtype)
    if stream:
        from prunelab.streaming import stream_evaluate

        results = stream_evaluate(model, tasks, dtype=torch_dtype, limit=limit, seed=seed,
                                  batch_size=batch_size, progress=progress,
                                  mc_score=mc_score)
    else:
        loaded = load_placed(model, where, torch_dtype)
        results = evaluate(loaded, tasks, limit=limit, seed=seed, batch_size=batch_size,
                           progress=progress, mc_score=mc_score)
    typer.echo(results.table())
    if out is not None:
        results.to_jsonl(out)
        typer.echo(f"wrote {len(results.examples)} examples to {out}")
    if summary_out is not None:
        write_json_atomic(summary_out, {"meta": results.meta, "summary": results.summary()})
        typer.echo(f"wrote the summary to {summary_out}")


@app.command("tasks")
def tasks_command(
    family: str | None = typer.Argument(None, help="show only this family"),
    sizes: bool = typer.Option(True, "--sizes/--no-sizes", help="load data to count items "
                               "(slower)"),
    export_lmeval: Path | None = typer.Option(None, "--export-lmeval",
                                              help="write the listed tasks as lm-eval YAML + "
                                                   "JSONL here"),
    limit: int | None = typer.Option(None, "--limit", help="with --export-lmeval: items per "
                                     "task"),
) -> None:
    """List every task: family, axis, level, size and licence."""
    check_output_dir(export_lmeval, "--export-lmeval")
    from prunelab.tasks.registry import get_tasks, list_tasks

    tasks = get_tasks(family) if family else list_tasks()
    if export_lmeval is not None:
        from prunelab.evaluate.lmeval import export_tasks

        written = export_tasks(tasks, export_lmeval, limit=limit)
        typer.echo(f"wrote {len(written)} lm-eval tasks to {export_lmeval} "
                   f"(use --include_path {export_lmeval})")
        return
    from prunelab.data.bigbench import FIX, availability

    missing = availability() if any(t.needs_bigbench for t in tasks) else None
    if missing is not None and missing.available:
        missing = None
    head = f"{'task':<30} {'family':<26} {'axis':<12} {'level':<9} {'kind':<9} {'size':>6}  licence"
    typer.echo(head)
    typer.echo("-" * len(head))
    for task in tasks:
        unavailable = task.needs_bigbench and missing is not None
        size = "n/a" if unavailable else str(task.size) if sizes else "-"
        mark = "*" if task.needs_bigbench else " "
        typer.echo(f"{task.name + mark:<30} {task.family:<26} {task.axis:<12} "
                   f"{task.level!s:<9} {task.kind:<9} {size:>6}  {task.license}")
    if any(t.needs_bigbench for t in tasks):
        note = (f"not available here: {missing.reason}; {FIX}" if missing is not None
                else "available here")
        typer.echo(f"\n* needs BIG-bench data ({note})")


@app.command()
def divergence(
    dense: str = typer.Argument(..., help="the dense model: zoo name or local model directory"),
    compressed: str = typer.Argument(..., help="the compressed model: a directory written by "
                                     "`prunelab prune` (or any model with the same tokenizer)"),
    source: str = typer.Option(defaults.EVAL_SOURCE, help="text: name or local file"),
    seqlen: int = typer.Option(defaults.EVAL_SEQLEN, help="tokens per window"),
    windows: int = typer.Option(defaults.EVAL_WINDOWS, help="number of non-overlapping windows"),
    batch_size: int = typer.Option(1, help="windows per forward pass"),
    out: Optional[str] = typer.Option(None, "--out", help="write the full result here (JSON: "
                                       "means, per-token JSD quantiles and histogram)"),
    dtype: str = typer.Option(defaults.DTYPE, help="precision both models are loaded and run "
                              "in: fp32, bf16 or fp16 (the divergences are summed in fp32 and "
                              "above)"),
    device: Optional[str] = typer.Option(None, help="run both models there, e.g. cuda "
                                         "(default: the CPU)"),
) -> None:
    """Jensen-Shannon divergence (nats), KL both ways and top-1 agreement of COMPRESSED's
    next-token distributions against DENSE's, per token of a text, averaged."""
    check_dtype_name(dtype)
    check_perplexity_args(source, seqlen, windows, batch_size)
    check_output_file(out, "--out", "divergence.json")
    where, torch_dtype = placement(device, dtype)
    from prunelab.evaluate.divergence import check_compatible
    from prunelab.evaluate.divergence import divergence as measure
    from prunelab.paths import write_json_atomic

    dense_model = load_placed(dense, where, torch_dtype)
    compressed_model = load_placed(compressed, where, torch_dtype)
    check_compatible(dense_model, compressed_model)
    result = measure(dense_model, compressed_model, source, seqlen, windows, batch_size,
                     progress=True)
    q = result.jsd_quantiles
    typer.echo(f"JSD {result.jsd:.5f} nats (median {q['q50']:.5f}, 95th pct {q['q95']:.5f})  "
               f"KL(dense‖compressed) {result.kl_dense_compressed:.5f}  "
               f"KL(compressed‖dense) {result.kl_compressed_dense:.5f}  "
               f"top-1 agreement {result.top1_agreement:.4f}")
    typer.echo(f"perplexity dense {result.perplexity_dense:.3f} -> compressed "
               f"{result.perplexity_compressed:.3f}  ({source}, {windows} windows x {seqlen} "
               f"tokens, {result.tokens} tokens compared, {result.seconds:.1f} s)")
    if out is not None:
        write_json_atomic(out, {"dense": dense, "compressed": compressed, "source": source,
                                "seqlen": seqlen, "windows": windows, **result.to_dict()})
        typer.echo(f"wrote {out}")


@app.command()
def refusal(
    model: str = typer.Argument(..., help="a chat model: zoo name or local model directory "
                                "(e.g. one written by `prunelab prune`)"),
    requests: Optional[Path] = typer.Option(None, help="requests to refuse, YAML or JSONL "
                                            "(default: prunelab's 15)"),
    templates: Optional[Path] = typer.Option(None, help="jailbreak templates with {request}, "
                                             "YAML or JSONL (default: prunelab's 6)"),
    benign: Optional[Path] = typer.Option(None, help="benign control requests, YAML or JSONL "
                                          "(default: prunelab's 15)"),
    judge: Optional[str] = typer.Option(None, help="also judge every answer with this model "
                                        "(zoo name or local directory): its probability of "
                                        "'Yes' to 'does the response refuse?'"),
    max_new_tokens: int = typer.Option(64, help="tokens generated per answer (greedy)"),
    batch_size: int = typer.Option(8, help="prompts per generation batch"),
    out: Optional[str] = typer.Option(None, "--out", help="write every prompt, answer and "
                                       "judgement here (JSONL)"),
    dtype: str = typer.Option(defaults.DTYPE, help="precision the model and the judge are "
                              "loaded and run in: fp32, bf16 or fp16"),
    device: Optional[str] = typer.Option(None, help="run the model and the judge there, e.g. "
                                         "cuda (default: the CPU)"),
) -> None:
    """Refusal rate per jailbreak template (keyword rule), and over-refusal on benign
    requests, with 95% Wilson intervals."""
    check_dtype_name(dtype)
    if max_new_tokens < 1 or batch_size < 1:
        raise PrunelabError("--max-new-tokens and --batch-size must be 1 or more",
                            "e.g. --max-new-tokens 64 --batch-size 8")
    check_output_file(out, "--out", "answers.jsonl")
    where, torch_dtype = placement(device, dtype)
    from prunelab.evaluate.refusal import evaluate_refusal, load_requests, load_templates
    from prunelab.paths import atomic_file
    from prunelab.tables import print_table

    harmful = load_requests(requests)  # bad files fail here, before the model is loaded
    wrappers = load_templates(templates)
    controls = load_requests(benign, benign=True)
    # a bad judge name fails before work
    judge_model = load_placed(judge, where, torch_dtype) if judge else None
    loaded = load_placed(model, where, torch_dtype)
    result = evaluate_refusal(loaded, harmful, wrappers, controls,
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              judge=judge_model)
    rows = []
    for s in result.summary:
        row = {"set": s["set"], "template": s["template"], "n": s["n"],
               "refused": s["refused"], "rate": f"{s['rate']:.2f}",
               "95% CI": f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]"}
        if judge_model is not None:
            row.update({"judge rate": f"{s['judge_rate']:.2f}",
                        "judge 95% CI": f"[{s['judge_ci_low']:.2f}, {s['judge_ci_high']:.2f}]",
                        "agree": f"{s['agreement']:.2f}"})
        rows.append(row)
    print_table(rows)
    if out is not None:
        import json

        with atomic_file(out) as handle:
            for row in result.rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        typer.echo(f"wrote {len(result.rows)} answers to {out}")
