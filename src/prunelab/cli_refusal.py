"""`prunelab refusal MODEL`: refusal rate under jailbreak templates, and over-refusal of
benign requests (see `prunelab.evaluate.refusal`). Wired in by `prunelab.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("refusal")(refusal_command)


def refusal_command(
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
    out: Optional[Path] = typer.Option(None, "--out", help="write every prompt, answer and "
                                       "judgement here (JSONL)"),
) -> None:
    """Refusal rate per jailbreak template (keyword rule), and over-refusal on benign
    requests, with 95% Wilson intervals."""
    from prunelab.evaluate.refusal import (evaluate_refusal, load_requests, load_templates)
    from prunelab.errors import PrunelabError
    from prunelab.paths import atomic_file
    from prunelab.tables import print_table
    from prunelab.zoo.models import load_model

    if max_new_tokens < 1 or batch_size < 1:
        raise PrunelabError("--max-new-tokens and --batch-size must be 1 or more",
                            "e.g. --max-new-tokens 64 --batch-size 8")
    harmful = load_requests(requests)  # bad files fail here, before the model is loaded
    wrappers = load_templates(templates)
    controls = load_requests(benign, benign=True)
    judge_model = load_model(judge) if judge else None  # a bad judge name fails before work
    loaded = load_model(model)
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
