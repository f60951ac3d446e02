"""`prunelab divergence DENSE COMPRESSED`: how far a compressed model's next-token
distributions moved from the dense model's (see `prunelab.evaluate.divergence`).

Wired into the main app by `prunelab.cli` with `register(app)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("divergence")(divergence_command)


def divergence_command(
    dense: str = typer.Argument(..., help="the dense model: zoo name or local model directory"),
    compressed: str = typer.Argument(..., help="the compressed model: a directory written by "
                                     "`prunelab prune` (or any model with the same tokenizer)"),
    source: str = typer.Option("squad-dev", help="text: name or local file"),
    seqlen: int = typer.Option(512, help="tokens per window"),
    windows: int = typer.Option(32, help="number of non-overlapping windows"),
    batch_size: int = typer.Option(1, help="windows per forward pass"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the full result here (JSON: "
                                       "means, per-token JSD quantiles and histogram)"),
) -> None:
    """Jensen-Shannon divergence (nats), KL both ways and top-1 agreement of COMPRESSED's
    next-token distributions against DENSE's, per token of a text, averaged."""
    from prunelab import api
    from prunelab.evaluate.divergence import check_compatible, divergence
    from prunelab.paths import write_json_atomic
    from prunelab.zoo.models import load_model

    api.check_perplexity_args(source, seqlen, windows, batch_size)
    dense_model = load_model(dense)
    compressed_model = load_model(compressed)
    check_compatible(dense_model, compressed_model)
    result = divergence(dense_model, compressed_model, source, seqlen, windows, batch_size,
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
