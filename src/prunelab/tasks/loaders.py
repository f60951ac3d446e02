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


@lru_cache(maxsize=64)
def read_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise PrunelabError(f"task data file {path} does not exist", "check the path") from None
    except json.JSONDecodeError as exc:
        raise PrunelabError(f"task data file {path} is not valid JSON: {exc}",
                            "fix the file (one JSON document, or use .jsonl)") from None


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl file (one object per line) or a .json file (a list, or {"examples": [...]})."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise PrunelabError(f"task data file {path} does not exist", "check the path") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PrunelabError(f"{path}:{number} is not valid JSON: {exc.msg}",
                                    "write one JSON object per line") from None
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
