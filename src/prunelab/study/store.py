"""The result store: one SQLite file per run directory, in WAL mode.

Each finished point is written in ONE transaction together with its per-example results, so
a `kill -9` at any moment leaves either the whole point or none of it: SQLite's journal makes
a half-written transaction invisible and rolls it back on the next open. Nothing is kept in
memory until the end; a crash loses at most the point in progress.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY,        -- hash of the full config, versions included
    grid_id TEXT NOT NULL,       -- the same hash without versions (which recipe cell it is)
    model TEXT NOT NULL,
    method TEXT NOT NULL, sparsity REAL NOT NULL, pattern TEXT, options TEXT NOT NULL,
                                 -- the first stage's (for quick queries; "dense": no stage)
    arm TEXT NOT NULL,           -- the compression with its x field left out: one curve
    x REAL NOT NULL, x_field TEXT,  -- the swept value on the x-axis, and its stage field
    x_is_amount INTEGER NOT NULL,   -- x measures how much is removed (a sparsity)
    stages TEXT NOT NULL,        -- the whole chain of stage configs, JSON
    seed INTEGER,
    task TEXT NOT NULL, family TEXT NOT NULL, axis TEXT, level TEXT NOT NULL,
    level_rank INTEGER NOT NULL, metric TEXT, lower_better INTEGER NOT NULL,
    n INTEGER NOT NULL, score REAL, ci_low REAL, ci_high REAL, chance REAL, at_chance INTEGER,
    config TEXT NOT NULL, seconds REAL, finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS points_grid ON points(grid_id);
CREATE TABLE IF NOT EXISTS examples (
    point_key TEXT NOT NULL REFERENCES points(key) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    example_id TEXT NOT NULL,
    value REAL,                  -- correct (0/1 or F1); rolling tasks: nats of the text
    weight REAL NOT NULL,        -- 1; rolling tasks: bytes of the text
    margin REAL,
    data TEXT NOT NULL,          -- the full per-example record as JSON
    PRIMARY KEY (point_key, idx)
);
CREATE TABLE IF NOT EXISTS compressions (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, config TEXT NOT NULL, result TEXT,
    perplexity REAL, model_info TEXT, seconds REAL, finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Measures of a whole compressed model beyond perplexity, JSON by kind (each registered
-- measure's name, `prunelab.study.measures`: "divergence", "refusal"), keyed by the
-- compression's key; and records of one point, keyed by the point's key (a `finetune` level's
-- fine-tuning, kind "training": steps, time, loss, the setting's held weights). A table of its
-- own, so stores written before it existed open unchanged (same schema version).
CREATE TABLE IF NOT EXISTS measures (key TEXT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL,
                                     PRIMARY KEY (key, kind));
"""

STORE_FILE = "results.sqlite"
POINT_COLUMNS = ("key", "grid_id", "model", "method", "sparsity", "pattern", "options", "arm",
                 "x", "x_field", "x_is_amount", "stages", "seed", "task", "family", "axis",
                 "level", "level_rank", "metric", "lower_better", "n", "score", "ci_low",
                 "ci_high", "chance", "at_chance", "config", "seconds", "finished")
# Raised when the columns above change; a store of another version is refused, not misread.
SCHEMA_VERSION = 2


def damaged_store(path: Path, exc: sqlite3.DatabaseError) -> PrunelabError:
    """A store SQLite cannot read (garbage, a truncated copy): one line naming the file."""
    return PrunelabError(
        f"{path} is damaged, SQLite cannot read it ({exc})",
        "move it aside and run the study again, in this --run-dir (its points are computed "
        "anew) or a fresh one; `sqlite3 FILE .recover` may save the rows still readable")


def _readable(method):
    """Turn SQLite's complaint about a damaged file into a `damaged_store` error; a busy
    database (another writer) is not damage and is left as it is."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise damaged_store(self.path, exc) from None

    return wrapper


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc)
    return not (isinstance(exc, sqlite3.OperationalError)
                and any(w in text for w in ("locked", "busy", "unable to open")))


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            if not _is_damage(exc):
                raise
            raise damaged_store(self.path, exc) from None

    def _open(self) -> None:
        # isolation_level=None: we open transactions ourselves, explicitly.
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed point survives even an OS crash, not only a killed process.
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        old_points = [r[1] for r in self.conn.execute("PRAGMA table_info(points)")]
        if old_points and "arm" not in old_points:
            self.conn.close()
            raise PrunelabError(f"{self.path} was written by an older prunelab (store schema 1)",
                                "pass a new --run-dir; the old run's report stays readable "
                                "with the prunelab that made it")
        self.conn.executescript(SCHEMA)
        if self.meta("schema_version") is None:
            self.set_meta("schema_version", SCHEMA_VERSION)

    @classmethod
    def in_dir(cls, run_dir: str | Path) -> Store:
        return cls(Path(run_dir) / STORE_FILE)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    @_readable
    def put_point(self, row: dict, examples: list[dict], records: dict | None = None) -> None:
        """Write a finished point, its examples and its measure's own records by kind (a
        `finetune` level's fine-tuning) atomically, replacing an older copy."""
        row = {**row, "finished": time.time(), "level": json.dumps(row["level"])}
        values = [_cell(row.get(c)) for c in POINT_COLUMNS]
        ex_rows = [(row["key"], i, str(ex.get("example_id", i)), ex.get("value"),
                    float(ex.get("weight", 1.0)), ex.get("margin"),
                    json.dumps(ex.get("data", ex), default=str, ensure_ascii=False))
                   for i, ex in enumerate(examples)]
        with self._transaction():
            self.conn.execute("DELETE FROM examples WHERE point_key = ?", (row["key"],))
            self.conn.execute(f"INSERT OR REPLACE INTO points ({', '.join(POINT_COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(POINT_COLUMNS))})", values)
            self.conn.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?)", ex_rows)
            self.conn.execute("DELETE FROM measures WHERE key = ?", (row["key"],))
            self._put_measures(row["key"], records or {})

    @_readable
    def put_compression(self, key: str, model: str, config: dict, result: dict | None,
                        model_info: dict, seconds: float, measures: dict | None = None,
                        perplexity: float | None = None) -> None:
        """Write a compressed model's row and its measures by kind (a measure that names a
        column of the compressions table, as perplexity, is stored there)."""
        from prunelab.study.measures import MEASURES

        measures = dict(measures or {})
        columns = {m.column: measures.pop(name) for name, m in MEASURES.items()
                   if m.column and name in measures}
        perplexity = columns.get("perplexity", perplexity)
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO compressions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, json.dumps(config, sort_keys=True), json.dumps(result, default=str),
                 perplexity, json.dumps(model_info, default=str), seconds, time.time()))
            self.conn.execute("DELETE FROM measures WHERE key = ?", (key,))
            self._put_measures(key, measures)

    def _put_measures(self, key: str, measures: dict) -> None:
        for kind, data in measures.items():
            if data is not None:
                self.conn.execute("INSERT INTO measures VALUES (?, ?, ?)",
                                  (key, kind, json.dumps(data, default=str)))

    @_readable
    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              (key, json.dumps(value, default=str)))

    def _transaction(self):
        return _Transaction(self.conn)

    # -- reading ------------------------------------------------------------------------------

    @_readable
    def finished_keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT key FROM points")}

    @_readable
    def meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @_readable
    def points(self, grid_ids: set[str] | None = None) -> list[dict]:
        """Finished points as dicts (level, options and config decoded); the newest copy of
        each grid cell when `grid_ids` is given (older copies were made by older versions)."""
        rows = [_decode(dict(r)) for r in
                self.conn.execute("SELECT * FROM points ORDER BY finished")]
        if grid_ids is None:
            return rows
        newest: dict[str, dict] = {}
        for row in rows:
            if row["grid_id"] in grid_ids:
                newest[row["grid_id"]] = row
        return list(newest.values())

    @_readable
    def examples(self, point_key: str) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT example_id, value, weight, margin FROM examples WHERE point_key = ? "
            "ORDER BY idx", (point_key,))]

    @_readable
    def example_records(self, point_key: str) -> list[dict]:
        return [json.loads(r[0]) for r in self.conn.execute(
            "SELECT data FROM examples WHERE point_key = ? ORDER BY idx", (point_key,))]

    @_readable
    def trainings(self) -> dict[str, dict]:
        """Each fine-tuned point's training record, by point key."""
        return {k: json.loads(d) for k, d in self.conn.execute(
            "SELECT key, data FROM measures WHERE kind = 'training'")}

    @_readable
    def compressions(self) -> list[dict]:
        """Compressed models' rows, each with every compression measure's result under its
        name (None where it was not taken)."""
        from prunelab.study.measures import stored_kinds

        measures: dict[str, dict] = {}
        for k, kind, d in self.conn.execute("SELECT key, kind, data FROM measures"):
            measures.setdefault(k, {})[kind] = json.loads(d)
        out = []
        for r in self.conn.execute("SELECT * FROM compressions ORDER BY finished"):
            row = dict(r)
            for col in ("config", "result", "model_info"):
                row[col] = json.loads(row[col]) if row[col] else None
            taken = measures.get(row["key"], {})
            row.update({kind: taken.get(kind) for kind in stored_kinds()})
            out.append(row)
        return out

    @_readable
    def integrity(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, bool):
        return int(value)
    return value


def _decode(row: dict) -> dict:
    row["level"] = json.loads(row["level"])
    row["options"] = json.loads(row["options"])
    row["stages"] = json.loads(row["stages"])
    row["config"] = json.loads(row["config"])
    row["x_is_amount"] = bool(row["x_is_amount"])
    row["lower_better"] = bool(row["lower_better"])
    row["at_chance"] = None if row["at_chance"] is None else bool(row["at_chance"])
    return row
