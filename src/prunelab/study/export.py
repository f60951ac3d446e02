"""Tidy tables out of a run directory: one row per observation, one column per variable.

Tables: "points" (one row per finished point), "examples" (one row per example of every
point), "measures" (one row per value of each compression measure, perplexity, divergence,
refusal or any registered one, on each compressed model), and the analysis tables "relative",
"monotonicity", "verdicts", "thresholds".
Formats: csv, json (a list of records), parquet (needs pyarrow).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.paths import atomic_file

TABLES = ("points", "examples", "measures", "relative", "monotonicity", "verdicts",
          "thresholds")
FORMATS = ("csv", "json", "parquet")
POINT_FIELDS = ("model", "arm", "x", "x_field", "method", "sparsity", "pattern", "seed", "task",
                "family", "axis", "level", "level_rank", "metric", "n", "score", "ci_low",
                "ci_high", "chance", "at_chance", "seconds", "stages", "key")


def _point(p: dict) -> dict:
    row = {k: p.get(k) for k in POINT_FIELDS}
    row["level"] = str(p["level"])
    row["stages"] = json.dumps(p["stages"], sort_keys=True)
    return row


def table(run_dir: str | Path, name: str) -> list[dict]:
    from prunelab.study.results import load_run

    if name not in TABLES:
        raise PrunelabError(f"unknown table {name!r}", f"use one of {', '.join(TABLES)}")
    run = load_run(run_dir, analyse_results=name not in ("points", "examples", "measures"))
    try:
        if name == "points":
            return [_point(p) for p in run.points]
        if name == "examples":
            rows = []
            for p in run.points:
                base = _point(p)
                for ex in run.store.examples(p["key"]):
                    rows.append({**base, "example_id": ex["example_id"], "value": ex["value"],
                                 "weight": ex["weight"], "margin": ex["margin"]})
            return rows
        if name == "measures":
            return measure_rows(run)
        return [_flat(r) for r in getattr(run.analysis, name)]
    finally:
        run.store.close()


def measure_rows(run) -> list[dict]:
    """One row per (compressed model, measure, field): each registered compression measure's
    values as its `Measure.export` flattens them."""
    from prunelab.study.measures import compression_measures
    from prunelab.study.plan import describe_compression

    rows = []
    for c in run.compressions:
        base = {"model": c["model"], "compression": describe_compression(c["config"]),
                "seed": c["config"].get("seed"), "compression_key": c["key"]}
        for measure in compression_measures():
            data = c.get(measure.column or measure.name)
            if data is None:
                continue
            for field, value in measure.export(data).items():
                rows.append({**base, "measure": measure.name, "field": field, "value": value})
    return rows


def _flat(row: dict) -> dict:
    """Intervals (low, high) become two columns; lists become JSON text; levels strings."""
    out = {}
    for key, value in row.items():
        if isinstance(value, tuple) and len(value) == 2:
            out[f"{key}_low"], out[f"{key}_high"] = value
        elif isinstance(value, list):
            out[key] = json.dumps(value)
        elif key == "level":
            out[key] = str(value)
        else:
            out[key] = value
    return out


def render(rows: list[dict], fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise PrunelabError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "json":
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in r.items()} for r in rows]
        return (json.dumps(clean, indent=1, default=str) + "\n").encode()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().encode()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PrunelabError("parquet export needs pyarrow, which is not installed",
                            "pip install pyarrow, or use --format csv or json") from None
    data = {c: [r.get(c) for r in rows] for c in columns}
    buf = io.BytesIO()
    pq.write_table(pa.table(data), buf)
    return buf.getvalue()


def export(run_dir: str | Path, fmt: str, name: str = "points",
           out: str | Path | None = None) -> Path:
    """Write table `name` of a run as `fmt`; default file: RUN_DIR/results-<name>.<fmt>."""
    payload = render(table(run_dir, name), fmt)
    path = Path(out) if out else Path(run_dir) / f"results-{name}.{fmt}"
    with atomic_file(path, "wb") as handle:
        handle.write(payload)
    return path
