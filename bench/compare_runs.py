"""Compare two study run directories' stores row by row.

    python bench/compare_runs.py RUN_A RUN_B

Every table of `results.sqlite` (points, examples, compressions, measures, meta) is matched
by its key; each key must be in both runs and each stored field identical, the wall-clock
columns and keys (`finished`, `seconds`, also inside a stored JSON record such as a
compression's result) aside, since they differ between any two runs. Prints the
number of rows compared and every difference; exits 1 on a difference, 2 on a bad argument.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

TABLES = {"points": ("key",), "examples": ("point_key", "idx"), "compressions": ("key",),
          "measures": ("key", "kind"), "meta": ("key",)}
CLOCK = {"finished", "seconds"}
SHOWN = 20  # differences printed in full; the rest are counted


def rows(path: Path, table: str) -> dict[tuple, dict]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        found = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not found:
            return {}
        key = TABLES[table]
        return {tuple(r[k] for k in key): {k: _without_clock(r[k]) for k in r.keys()
                                           if k not in CLOCK}
                for r in conn.execute(f"SELECT * FROM {table}")}
    finally:
        conn.close()


def _without_clock(value):
    """A stored value with every wall-clock key removed, JSON records included."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _without_clock(v) for k, v in value.items() if k not in CLOCK}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    return value


def compare(run_a: Path, run_b: Path) -> tuple[int, list[str]]:
    compared, differences = 0, []
    for table in TABLES:
        a, b = rows(run_a / "results.sqlite", table), rows(run_b / "results.sqlite", table)
        differences += [f"{table} {key}: only in {run_a}" for key in sorted(a.keys() - b.keys())]
        differences += [f"{table} {key}: only in {run_b}" for key in sorted(b.keys() - a.keys())]
        for key in sorted(a.keys() & b.keys()):
            compared += 1
            for field in sorted(a[key].keys() | b[key].keys()):
                if a[key].get(field) != b[key].get(field):
                    differences.append(f"{table} {key} {field}: {a[key].get(field)!r:.120} != "
                                       f"{b[key].get(field)!r:.120}")
    return compared, differences


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python bench/compare_runs.py RUN_A RUN_B", file=sys.stderr)
        return 2
    runs = [Path(p) for p in argv]
    for run in runs:
        if not (run / "results.sqlite").is_file():
            print(f"{run} has no results.sqlite: pass two study run directories",
                  file=sys.stderr)
            return 2
    compared, differences = compare(*runs)
    print(f"{compared} rows compared (points, examples, compressions, measures, meta)")
    for line in differences[:SHOWN]:
        print("  " + line)
    if len(differences) > SHOWN:
        print(f"  ... and {len(differences) - SHOWN} more differences")
    print("identical" if not differences else f"{len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
