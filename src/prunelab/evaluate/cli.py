"""`prunelab eval` and `prunelab tasks`. Thin: parse, call the Python API, print.

Wired into the main app by `prunelab.cli` with `register(app)`. Bad input raises
PrunelabError, which the main CLI prints on one line with exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("tasks")(tasks_command)


def eval_command(
    model: str = typer.Argument(..., help="model name (see `prunelab models`) or a local model directory"),
    tasks: str = typer.Option(..., "--tasks", "-t",
                              help="comma-separated: family (arithmetic), family:level "
                                   "(arithmetic:3), or a task spec file (my_task.yaml)"),
    limit: int | None = typer.Option(None, "--limit", "-n", help="at most this many items per task level"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write every example's result here (JSONL)"),
    summary_out: Path | None = typer.Option(None, "--summary", help="write the per-level summary here (JSON)"),
    seed: int = typer.Option(0, help="seeds item selection (with --limit) and demonstrations"),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="choices or prompts per forward pass"),
    mc_score: str | None = typer.Option(None, help="multiple-choice decision for every task: mean "
                                        "(log-prob per token) or sum; default: each task's own"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar with ETA"),
) -> None:
    """Evaluate MODEL on tasks; print a per-level table with 95% intervals."""
    from prunelab.evaluate.runner import check_prompted, evaluate
    from prunelab.paths import write_json_atomic
    from prunelab.tasks.registry import get_tasks
    from prunelab.zoo.models import load_model

    for task in get_tasks(tasks):  # unknown tasks and too-large limits fail before loading
        check_prompted(task)
        task.select(limit, seed)
    loaded = load_model(model)
    results = evaluate(loaded, tasks, limit=limit, seed=seed, batch_size=batch_size,
                       progress=progress, mc_score=mc_score)
    typer.echo(results.table())
    if out is not None:
        results.to_jsonl(out)
        typer.echo(f"wrote {len(results.examples)} examples to {out}")
    if summary_out is not None:
        write_json_atomic(summary_out, {"meta": results.meta, "summary": results.summary()})
        typer.echo(f"wrote the summary to {summary_out}")


def tasks_command(
    family: str | None = typer.Argument(None, help="show only this family"),
    sizes: bool = typer.Option(True, "--sizes/--no-sizes", help="load data to count items (slower)"),
    export_lmeval: Path | None = typer.Option(None, "--export-lmeval",
                                              help="write the listed tasks as lm-eval YAML + JSONL here"),
    limit: int | None = typer.Option(None, "--limit", help="with --export-lmeval: items per task"),
) -> None:
    """List every task: family, axis, level, size and licence."""
    from prunelab.tasks.registry import get_tasks, list_tasks

    tasks = get_tasks(family) if family else list_tasks()
    if export_lmeval is not None:
        from prunelab.evaluate.lmeval import export_tasks

        written = export_tasks(tasks, export_lmeval, limit=limit)
        typer.echo(f"wrote {len(written)} lm-eval tasks to {export_lmeval} "
                   f"(use --include_path {export_lmeval})")
        return
    head = f"{'task':<30} {'family':<26} {'axis':<12} {'level':<9} {'kind':<9} {'size':>6}  licence"
    typer.echo(head)
    typer.echo("-" * len(head))
    for task in tasks:
        size = str(task.size) if sizes else "-"
        typer.echo(f"{task.name:<30} {task.family:<26} {task.axis:<12} {task.level!s:<9} "
                   f"{task.kind:<9} {size:>6}  {task.license}")
