"""`prunelab study | demo | results | report`: parse, call study and report, print.

The glue between the study and its report lives here, above both, so that neither imports the
other the wrong way. No logic of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from prunelab.checks import check_dtype_name, check_output_dir, check_output_file
from prunelab.cli.common import Interrupted, app
from prunelab.errors import PrunelabError


def _overrides(sets: list[str] | None, models: list[str] | None, tasks: list[str] | None,
               limit: int | None, seeds: list[int] | None, dtype: str | None = None
               ) -> list[str]:
    import json

    out = list(sets or [])
    if dtype is not None:
        out.append(f"dtype={check_dtype_name(dtype)}")
    if models:
        out.append(f"models={json.dumps(models)}")
    if tasks:
        out.append(f"tasks={json.dumps(tasks)}")
    if limit is not None:
        out.append(f"eval.limit={limit}")
    if seeds:
        out.append(f"seeds={json.dumps(seeds)}")
    return out


def _print_dry_run(plan: dict) -> None:
    from prunelab.study.runner import DETECTABLE_AIM
    from prunelab.tables import print_table

    print_table(plan["units"], ["model", "compression", "tasks", "pending", "est_seconds"])
    g = plan["grid"]
    typer.echo(f"\ntask levels ({g['task_levels']}): {', '.join(plan['tasks'])}")
    typer.echo(f"grid: {g['models']} model(s) x {g['compressed_models'] // max(1, g['models'])} "
               f"compressed models (dense included) x {g['task_levels']} task levels = "
               f"{g['points']} points; {plan['pending_points']} to run")
    typer.echo(f"estimated time: {_duration(plan['est_seconds'])} (rough: scaled from a 135M "
               "model's forward speed on 2 CPU cores)")
    if plan["power"]:
        typer.echo("\npower: the smallest extra drop of the hardest level over the easiest that "
                   "these item counts detect with 80% power, at a sparsity keeping 80% of the "
                   "dense score (from the run directory's dense points, the pilot: 0/1 scores "
                   "need their means, else 0.5 is assumed; continuous measures need their "
                   "per-item values)")
        shown = [{**r, "min_effect": "–" if r["min_effect"] is None else r["min_effect"]}
                 for r in plan["power"]]
        print_table(shown, ["model", "family", "levels", "items", "dense", "min_effect"])
        if any(r["min_effect"] is None for r in plan["power"]):
            typer.echo("for the missing estimates, run the recipe until its dense points are done "
                       "(they run first; stop it there if you like) and dry-run again with that "
                       "--run-dir")
        weak = list(dict.fromkeys(r["family"] for r in plan["power"] if r["ok"] is False))
        if weak:
            typer.echo(f"warning: {', '.join(weak)} cannot see an effect below "
                       f"{DETECTABLE_AIM} at these item counts: raise eval.limit "
                       "(the effect shrinks as 1/sqrt(items))")


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s"


def _points_kept(run_dir: Path) -> int:
    """Finished points in the run directory's store: every one that completed is kept."""
    from prunelab.study.store import STORE_FILE, Store

    if not (run_dir / STORE_FILE).is_file():
        return 0
    with Store.in_dir(run_dir) as store:
        return len(store.finished_keys())


EXECUTORS = ("local", "ray")


def _executor(name: str, address: str | None, shared_dir: Path | None, dry: bool,
              workers: int = 1):
    """The executor the options name, refused in one line before anything is loaded: an
    --address or --shared-dir without --executor ray, --workers with it, Ray missing, an
    address that does not answer."""
    if name not in EXECUTORS:
        raise PrunelabError(f"--executor {name!r} is not one of {', '.join(EXECUTORS)}",
                            "pass --executor local (the default) or --executor ray")
    from prunelab.study.processes import ProcessExecutor, check_workers

    check_workers(workers)
    if name != "ray":
        for option, value in (("--address", address), ("--shared-dir", shared_dir)):
            if value is not None:
                raise PrunelabError(f"{option} is for a Ray cluster, and the executor is "
                                    f"{name}", f"add --executor ray, or drop {option}")
        if workers == 1 or dry:
            return None
        return ProcessExecutor(workers)
    if workers != 1:
        raise PrunelabError("--workers is for the local executor; a Ray cluster's workers "
                            "are its nodes' CPUs", "drop --workers")
    from prunelab.study.ray_executor import RayExecutor, require_ray

    require_ray()
    if shared_dir is not None:
        check_output_dir(shared_dir, "--shared-dir")
    return None if dry else RayExecutor(address or "auto", shared_dir)


def _run(recipe, run_dir: Path, force: bool, dry: bool, report: bool,
         device: str | None = None, progress: bool = True, executor=None) -> None:
    from prunelab.study.backend import PrunelabBackend
    from prunelab.study.runner import StudyInterrupted, dry_run, run_study

    if not dry:
        check_output_dir(run_dir, "--run-dir")
    backend = PrunelabBackend(device)
    if dry:
        _print_dry_run(dry_run(recipe, backend, run_dir=run_dir))
        return
    try:
        outcome = run_study(recipe, run_dir, force=force, backend=backend, progress=progress,
                            executor=executor)
    except StudyInterrupted as exc:  # Ctrl-C, or SIGTERM (see `prunelab.cli.main`)
        raise Interrupted(str(exc)) from None
    except KeyboardInterrupt:  # before the runner started its points
        raise Interrupted(f"interrupted; {_points_kept(run_dir)} points kept, rerun to "
                          "resume") from None
    typer.echo(f"{outcome.points_run} points run, {outcome.points_done_before} already done "
               f"(of {outcome.points_total}) in {_duration(outcome.seconds)}")
    typer.echo(f"results: {run_dir / 'results.sqlite'}")
    if report:
        from prunelab.report import build_report

        for kind, path in build_report(run_dir).items():
            typer.echo(f"report ({kind}): {path}")


@app.command()
def study(
    recipe: Path = typer.Argument(..., help="a YAML recipe (see recipes/)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the grid, its size and an "
                                 "estimated time; run nothing"),
    run_dir: Optional[Path] = typer.Option(None, help="where results go (default runs/NAME)"),
    force: bool = typer.Option(False, help="reuse a run directory of another recipe"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a recipe field: "
                                             "PATH=VALUE, e.g. eval.limit=20 (repeatable)"),
    model: Optional[list[str]] = typer.Option(None, help="replace the recipe's models"),
    tasks: Optional[list[str]] = typer.Option(None, help="replace the recipe's tasks"),
    limit: Optional[int] = typer.Option(None, help="items per task level"),
    seed: Optional[list[int]] = typer.Option(None, help="replace the recipe's seeds"),
    report: bool = typer.Option(True, help="write report.html / report.md at the end"),
    device: Optional[str] = typer.Option(None, help="run models there, e.g. cuda "
                                         "(default: the CPU)"),
    progress: bool = typer.Option(True, help="show a progress bar with an ETA"),
    executor: str = typer.Option("local", help="where points run: local (this process) or "
                                 "ray (a Ray cluster; needs prunelab[ray])"),
    address: Optional[str] = typer.Option(None, help="with --executor ray: the cluster's head, "
                                          "HOST:PORT, or auto (the one started on this "
                                          "machine; the default)"),
    shared_dir: Optional[Path] = typer.Option(None, help="with --executor ray: where large "
                                              "results travel, a path every node sees "
                                              "(default: the run directory)"),
    dtype: Optional[str] = typer.Option(None, help="load and compute every model in fp32, bf16 "
                                        "or fp16 (the recipe's dtype:, which it replaces)"),
    workers: int = typer.Option(1, help="local executor: compute points in this many processes, "
                                "the machine's cores shared out between them"),
) -> None:
    """Run (or resume) a pruning study; finished points are never recomputed."""
    from prunelab.study.checks import check_recipe
    from prunelab.study.recipe import load_recipe

    if not dry_run:
        check_output_dir(run_dir, "--run-dir")  # before the recipe's checks load anything
    runner = _executor(executor, address, shared_dir, dry_run, workers)
    r = load_recipe(recipe, _overrides(set_, model, tasks, limit, seed, dtype),
                    check=check_recipe)
    _run(r, run_dir or Path("runs") / r.name, force, dry_run, report, device, progress, runner)

@app.command()
def demo(
    run_dir: Path = typer.Option(Path("runs/demo"), help="where results go"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the grid; run nothing"),
    force: bool = typer.Option(False, help="reuse a run directory of another recipe"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a field"),
    workers: Optional[int] = typer.Option(None, help="compute points in this many processes "
                                          "(default: one per core, as many as memory holds)"),
) -> None:
    """The built-in study: magnitude, Wanda and SparseGPT on smollm2-135m (< 20 min)."""
    from prunelab.study.demo import demo_recipe

    if workers is None:
        from prunelab.study.processes import ProcessExecutor, usable_cores

        runner = None if dry_run else ProcessExecutor(usable_cores(), fit=True)
    else:
        runner = _executor("local", None, None, dry_run, workers)
    _run(demo_recipe(set_), run_dir, force, dry_run, True, executor=runner)

@app.command()
def results(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    format: str = typer.Option("csv", "--format", help="csv, parquet or json"),
    table: str = typer.Option("points", help="points, examples, relative, monotonicity, "
                              "verdicts or thresholds"),
    out: Optional[str] = typer.Option(None, help="output file ('-' = stdout; default "
                                      "RUN_DIR/results-TABLE.FORMAT)"),
) -> None:
    """Export a run's results as a tidy table."""
    from prunelab.study.export import export, render, table as get_table

    if out != "-":
        check_output_file(out, "--out", f"results-{table}.{format}")
    if out is None and run_dir.is_dir():  # the default file goes into the run directory
        check_output_dir(run_dir, "RUN_DIR")
    if out == "-":
        sys.stdout.buffer.write(render(get_table(run_dir, table), format))
        return
    typer.echo(f"wrote {export(run_dir, format, table, out)}")

@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory")) -> None:
    """Rebuild report.html and report.md of a run from its store."""
    if run_dir.is_dir():  # a missing one is named by build_report
        check_output_dir(run_dir, "RUN_DIR")
    from prunelab.report import build_report

    for kind, path in build_report(run_dir).items():
        typer.echo(f"report ({kind}): {path}")
