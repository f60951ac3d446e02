"""`prunelab pack | unpack`: a pruned model's compact sparse form, and back (prunelab.compact)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prunelab.checks import (COMPACT_LAYOUTS, COMPACT_VALUE_DTYPES, check_compact_layout,
                             check_model_source_dir, check_new_dir, check_value_dtype)
from prunelab.cli.common import app


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@app.command()
def pack(
    directory: Path = typer.Argument(..., help="a pruned model directory (`prunelab prune`)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the compact "
                                       "checkpoint (default: DIRECTORY-compact)"),
    layout: str = typer.Option(COMPACT_LAYOUTS[0], help="prunelab (smallest: N:M matrices as "
                               "group indices) or compressed-tensors (its former "
                               "sparse-bitmask and sparse-24-bitmask formats only)"),
    dtype: str = typer.Option(COMPACT_VALUE_DTYPES[0], help="value dtype: keep (the "
                              "checkpoint's own, bit-exact) or " + ", ".join(
                                  COMPACT_VALUE_DTYPES[1:]) + " (rounds every float tensor)"),
) -> None:
    """Store DIRECTORY's sparse matrices as their kept weights and a mask (smaller on disk)."""
    check_model_source_dir(directory, compact=False)
    check_compact_layout(layout)
    check_value_dtype(dtype)
    target = out if out is not None else directory.with_name(directory.name + "-compact")
    check_new_dir(target)
    from prunelab.compact_dirs import pack as run_pack
    from prunelab.compact_dirs import physical_account

    record = run_pack(directory, target, layout=layout, dtype=dtype)
    account = physical_account(target)
    typer.echo(f"packed {len(record['layers'])} of {account['prunable_matrices']} prunable "
               f"matrices ({record['dtype']} values): weights {_mb(account['dense_bytes'])} "
               f"dense -> {_mb(account['compact_bytes'])} compact "
               f"({account['dense_bytes'] / account['compact_bytes']:.2f}x smaller; prunable "
               f"matrices alone {account['prunable_dense_bytes'] / account['prunable_compact_bytes']:.2f}x)")
    typer.echo(f"saved to {target}")


@app.command()
def unpack(
    directory: Path = typer.Argument(..., help="a compact checkpoint (`prunelab pack`)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the dense model "
                                       "(default: DIRECTORY-dense)"),
) -> None:
    """Write a compact checkpoint back as dense safetensors, bit for bit."""
    check_model_source_dir(directory, compact=True)
    target = out if out is not None else directory.with_name(directory.name + "-dense")
    check_new_dir(target)
    from prunelab.compact_dirs import unpack as run_unpack

    run_unpack(directory, target)
    typer.echo(f"saved to {target}")
