"""Turn data files into `Item`s: BIG-bench task.json files and plain JSON/JSONL rows.

Loading is declarative: a loader is a function of a path and a few field names, cached per
file so that the levels of a family (and `prunelab tasks`) read each file once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.tasks.base import Item


def read_text(path: Path, what: str = "task data") -> str:
    """A file's text, UTF-8; one line naming the file where it is missing, unreadable or not
    UTF-8 (with the line of the first bad byte)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PrunelabError(f"{what} file {path} does not exist", "check the path") from None
    except OSError as exc:
        raise PrunelabError(f"cannot read {what} file {path}: {exc.strerror or exc}",
                            "pass a readable file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PrunelabError(f"{what} file {path} is not UTF-8 text: byte {raw[exc.start]:#04x} "
                            f"on line {line}", "save it as UTF-8") from None


@lru_cache(maxsize=64)
def read_json(path: str) -> object:
    text = read_text(Path(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrunelabError(f"task data file {path} is not valid JSON: {exc}",
                            "fix the file (one JSON document, or use .jsonl)") from None


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl file (one object per line) or a .json file (a list, or {"examples": [...]})."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PrunelabError(f"{path}:{number} is not valid JSON: {exc.msg}",
                                    "write one JSON object per line") from None
            if not isinstance(rows[-1], dict):
                raise PrunelabError(f"{path}:{number} is not a JSON object",
                                    'write one object per line, e.g. {"input": ...}')
    else:
        data = read_json(str(path))
        rows = data.get("examples") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PrunelabError(f"{path} does not hold a list of JSON objects",
                            'use JSONL, a JSON list, or {"examples": [...]}')
    return rows


def bigbench_mc(path: Path, id_prefix: str = "") -> list[Item]:
    """Multiple-choice items from a BIG-bench task.json ("input" + "target_scores").

    Correct choices are those with the highest score, when that score is positive. Choice
    order is the file's (the correct one is often last; log-likelihood scoring has no
    position bias, and lm-eval exports keep the same order).
    """
    items = []
    for index, example in enumerate(read_rows(path)):
        scores = example.get("target_scores")
        if not scores:
            continue
        choices = tuple(scores)
        best = max(scores.values())
        gold = tuple(i for i, c in enumerate(choices) if best > 0 and scores[c] == best)
        if not gold:
            continue
        items.append(Item(id=f"{id_prefix}{index}", input=example["input"], choices=choices,
                          gold=gold))
    return items


def bigbench_generate(path: Path, id_prefix: str = "") -> list[Item]:
    """Generation items from a BIG-bench task.json ("input" + "target", a string or a list)."""
    items = []
    for index, example in enumerate(read_rows(path)):
        target = example.get("target")
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t.strip())
        if targets:
            items.append(Item(id=f"{id_prefix}{index}", input=example["input"], targets=targets))
    return items
