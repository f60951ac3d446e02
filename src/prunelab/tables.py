"""Plain-text tables for the command lines.

Its own module because the main CLI (`prunelab.cli`) imports the subsystems' CLIs to register
their commands; helpers they share live here, so that none of them imports `prunelab.cli` back.
"""

from __future__ import annotations

import typer


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    """Left-aligned columns under a header and a rule; nothing for no rows."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    typer.echo("  ".join("-" * w for w in widths))
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)))
