"""`prunelab route MODEL`: SEAP's task experts behind a router, evaluated on the tasks (see
`prunelab.routing`)."""

from __future__ import annotations

from typing import Optional

import typer

from prunelab import defaults
from prunelab.checks import check_dtype_name, check_output_file
from prunelab.prune_request import check_prune_request
from prunelab.cli.common import DTYPE_HELP, app, option_pairs, placement
from prunelab.errors import PrunelabError


@app.command()
def route(
    model: str = typer.Argument(..., help="zoo name or local model directory"),
    families: str = typer.Option(..., "--families", help="comma-separated task families, one "
                                 "expert each (e.g. arithmetic,options)"),
    sparsity: float = typer.Option(..., help="share of each expert's parameters removed"),
    limit: int = typer.Option(100, "--limit", "-n", help="items per task level evaluated; the "
                              "rest calibrate the experts and train the router"),
    seed: int = typer.Option(0, help="seeds item selection and demonstrations"),
    samples: int = typer.Option(32, help="calibration windows per expert"),
    seqlen: int = typer.Option(256, help="tokens per calibration window"),
    option: Optional[list[str]] = typer.Option(None, "--option", help="a seap option, "
                                               "KEY=VALUE (repeatable; see `prunelab methods`)"),
    batch_size: int = typer.Option(defaults.EVAL_BATCH_SIZE, "--batch-size", "-b"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="write every example's result "
                                      "here (JSONL)"),
    dtype: str = typer.Option(defaults.DTYPE, help=DTYPE_HELP),
) -> None:
    """Prune one SEAP expert per task family (calibrated on that family's held-out prompts),
    route every input to an expert by a classifier on the shared first blocks, and evaluate:
    the per-level table, and where each family's inputs were routed."""
    check_dtype_name(dtype)
    names = [f.strip() for f in families.split(",") if f.strip()]
    if len(names) < 2:
        raise PrunelabError("routing needs two or more task families",
                            "e.g. --families synth_arithmetic,synth_options")
    options = option_pairs(option)
    check_output_file(out, "--out")
    check_prune_request("seap", sparsity, None, None, options)
    from prunelab.tasks.calibration import check as check_held_out
    from prunelab.tasks.registry import get_tasks

    for family in names:  # unknown families, then too few held-out items, before the model
        for task in get_tasks([family]):
            task.select(min(limit, task.size), seed)
    for family in names:
        check_held_out(f"task:{family}?limit={limit}&seed={seed}")
    from prunelab.api import check_prune_args
    from prunelab.evaluate.runner import evaluate
    from prunelab.routing import build_seap_router
    from prunelab.tables import print_table
    from prunelab.zoo.models import load_model

    check_prune_args("seap", sparsity, None, None, options)  # the option values (seap's code)
    _, torch_dtype = placement(None, dtype)
    loaded = load_model(model, dtype=torch_dtype)
    routed, fitted = build_seap_router(loaded, names, sparsity, eval_limit=limit,
                                       eval_seed=seed, n_samples=samples, seqlen=seqlen,
                                       **options)
    rows, examples = [], []
    for family in names:
        before = dict(routed.model.route_counts)
        results = evaluate(routed, [family], limit=limit, seed=seed, batch_size=batch_size,
                           progress=False)
        typer.echo(results.table())
        examples += results.examples
        sent = {k: v - before.get(k, 0) for k, v in routed.model.route_counts.items()}
        total = sum(sent.values()) or 1
        rows.append({"family": family, "router on held-out prompts": f"{fitted[family]:.3f}",
                     "evaluation rows sent home": f"{sent.get(family, 0) / total:.3f}",
                     "elsewhere": ", ".join(f"{k} {v}" for k, v in sent.items()
                                            if k != family and v) or "-"})
    print_table(rows)
    if out is not None:
        from prunelab.evaluate.results import EvalResults

        EvalResults(examples, {"model": loaded.name, "routed": names}).to_jsonl(out)
        typer.echo(f"wrote {len(examples)} examples to {out}")
