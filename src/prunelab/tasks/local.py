"""Tasks from local JSON/JSONL files, described by a small declarative spec (YAML or JSON).

A minimal spec, `capitals.yaml`, beside `capitals.jsonl`:

    name: capitals
    kind: mc                      # mc | generate | rolling
    data: capitals.jsonl          # relative to the spec file
    fields: {input: question, choices: options, answer: answer}

Optional keys: family, axis, level, level_rank, shots, metric (generate: contains |
exact_match | f1), max_new_tokens, mc_score (mean | sum), license, source, description,
template (input_format, answer_format, prefix, separator), paired_levels (true when every
level holds the same items, by id, in another guise: the study then compares levels item by
item), and `levels`: a list of mappings, each one level of the family overriding any key
above (e.g. its own `data`).

Rows: "mc" needs input, choices (non-empty list) and answer (index, the correct choice's
text, or a list of either); a BIG-bench row with "target_scores" works as is. "generate"
needs input and targets (a string or a list). "rolling" needs text. `id` is optional (the
row number otherwise). Every row is validated when the task is selected, before any model
runs, so a bad file fails fast with its line number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.tasks.base import GENERATE_METRICS, PROMPTED_KINDS, Item, Task, Template
from prunelab.tasks.loaders import read_rows

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_SPEC_KEYS = {"name", "kind", "data", "fields", "family", "axis", "level", "level_rank", "shots",
              "metric", "max_new_tokens", "license", "source", "description", "template", "levels",
              "mc_score", "paired_levels"}
_DEFAULT_FIELDS = {"id": "id", "input": "input", "choices": "choices", "answer": "answer",
                   "targets": "targets", "text": "text", "context": "context"}


def is_spec_path(selector: str) -> bool:
    return selector.endswith(SPEC_SUFFIXES) and Path(selector).expanduser().exists()


def load_task_file(path: str | Path) -> list[Task]:
    """All tasks (levels) a spec file declares, with their data loaded and validated."""
    path = Path(path).expanduser().resolve()
    spec = _read_spec(path)
    levels = spec.pop("levels", None) or [{}]
    if not isinstance(levels, list) or not all(isinstance(lv, dict) for lv in levels):
        raise PrunelabError(f"{path}: 'levels' must be a list of mappings",
                            "write levels: [{level: easy, data: easy.jsonl}, ...]")
    tasks = []
    for rank, overrides in enumerate(levels):
        merged = {**spec, **overrides}
        tasks.append(_build(path, merged, default_rank=rank, several=len(levels) > 1))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise PrunelabError(f"{path}: levels share a name ({names})", "give each level its own 'level'")
    return tasks


def _read_spec(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as exc:  # both parsers' errors: report where, not a traceback
        raise PrunelabError(f"{path} is not a valid task spec: {str(exc).splitlines()[0]}",
                            "fix its YAML/JSON syntax") from None
    if not isinstance(spec, dict):
        raise PrunelabError(f"{path} is not a mapping", "write name:, kind:, data: at the top level")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise PrunelabError(f"{path}: unknown key(s) {sorted(unknown)}",
                            f"use only {sorted(_SPEC_KEYS)}")
    return spec


def _require(path: Path, spec: dict, key: str) -> Any:
    if spec.get(key) in (None, ""):
        raise PrunelabError(f"{path}: the spec has no '{key}'", f"add '{key}:' to the spec")
    return spec[key]


def _build(path: Path, spec: dict, default_rank: int, several: bool) -> Task:
    name = str(_require(path, spec, "name"))
    kind = _require(path, spec, "kind")
    if kind not in PROMPTED_KINDS:
        raise PrunelabError(f"{path}: kind {kind!r} is not one of {list(PROMPTED_KINDS)}",
                            "use mc, generate or rolling")
    data = Path(str(_require(path, spec, "data"))).expanduser()
    data = data if data.is_absolute() else path.parent / data
    fields = {**_DEFAULT_FIELDS, **(spec.get("fields") or {})}
    metric = spec.get("metric") or {"mc": "accuracy", "generate": "exact_match",
                                     "rolling": "bits_per_byte"}[kind]
    if kind == "generate" and metric not in GENERATE_METRICS:
        raise PrunelabError(f"{path}: metric {metric!r} is not one of {list(GENERATE_METRICS)}",
                            "pick a generation metric")
    template = spec.get("template") or {}
    if not isinstance(template, dict) or set(template) - {"input_format", "answer_format",
                                                          "prefix", "separator"}:
        raise PrunelabError(f"{path}: 'template' must map input_format/answer_format/prefix/"
                            "separator to strings", "fix the template")
    mc_score = spec.get("mc_score", "mean")
    if mc_score not in ("mean", "sum"):
        raise PrunelabError(f"{path}: mc_score {mc_score!r} is not mean or sum", "use mean or sum")
    level = spec.get("level", default_rank if several else "default")
    family = str(spec.get("family") or name)
    items = _items(data, kind, fields)  # validate now: fail before any model runs
    task = Task(
        name=f"{family}:{level}" if several or "family" in spec else name, family=family,
        axis=str(spec.get("axis", "none")), level=level,
        level_rank=int(spec.get("level_rank", default_rank)), kind=kind,
        loader=lambda: items, template=Template(**template), metric=metric,
        shots=int(spec.get("shots", 0)), max_new_tokens=int(spec.get("max_new_tokens", 16)),
        mc_score=mc_score, paired_levels=_flag(path, spec, "paired_levels"),
        license=str(spec.get("license", "unknown (local file)")),
        source=str(spec.get("source", data)), description=str(spec.get("description", "")))
    return task


def _flag(path: Path, spec: dict, key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise PrunelabError(f"{path}: {key!r} must be true or false, got {value!r}",
                            f"write {key}: true or leave it out")
    return value


def _items(data: Path, kind: str, fields: dict[str, str]) -> list[Item]:
    rows = read_rows(data)
    if not rows:
        raise PrunelabError(f"{data} has no rows", "add at least one example")
    items, seen = [], set()
    for number, row in enumerate(rows, 1):
        where = f"{data} row {number}"
        item_id = str(row.get(fields["id"], number - 1))
        if item_id in seen:
            raise PrunelabError(f"{where}: duplicate id {item_id!r}", "make ids unique")
        seen.add(item_id)
        if kind == "rolling":
            text = row.get(fields["text"])
            if not isinstance(text, str) or not text:
                raise PrunelabError(f"{where}: missing '{fields['text']}'", "give every row a text")
            items.append(Item(id=item_id, text=text))
            continue
        text = row.get(fields["input"])
        if not isinstance(text, str):
            raise PrunelabError(f"{where}: missing '{fields['input']}'", "give every row an input string")
        context = str(row.get(fields["context"], ""))
        if kind == "generate":
            targets = row.get(fields["targets"], row.get("target"))
            targets = [targets] if isinstance(targets, str) else targets
            if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
                raise PrunelabError(f"{where}: no target answer ('{fields['targets']}')",
                                    "give a non-empty string or list of strings")
            items.append(Item(id=item_id, input=text, targets=tuple(targets), context=context))
            continue
        choices, gold = _choices(row, fields, where)
        items.append(Item(id=item_id, input=text, choices=choices, gold=gold, context=context))
    return items


def _choices(row: dict, fields: dict[str, str], where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if "target_scores" in row and fields["choices"] not in row:  # a BIG-bench row
        scores = row["target_scores"]
        if not isinstance(scores, dict) or not scores:
            raise PrunelabError(f"{where}: empty target_scores", "list at least two choices")
        choices = tuple(str(c) for c in scores)
        best = max(scores.values())
        gold = tuple(i for i, c in enumerate(scores) if best > 0 and scores[c] == best)
    else:
        choices = row.get(fields["choices"])
        if not isinstance(choices, list) or not choices:
            raise PrunelabError(f"{where}: empty or missing choices ('{fields['choices']}')",
                                "give a non-empty list of choices")
        if not all(isinstance(c, str) and c for c in choices):
            raise PrunelabError(f"{where}: every choice must be a non-empty string", "fix the choices")
        choices = tuple(choices)
        answer = row.get(fields["answer"])
        answers = answer if isinstance(answer, list) else [answer]
        gold_list = []
        for a in answers:
            if isinstance(a, bool) or a is None:
                continue
            if isinstance(a, int) and 0 <= a < len(choices):
                gold_list.append(a)
            elif isinstance(a, str) and a in choices:
                gold_list.append(choices.index(a))
        gold = tuple(sorted(set(gold_list)))
    if len(choices) < 2:
        raise PrunelabError(f"{where}: only {len(choices)} choice", "give at least two choices")
    if len(set(choices)) != len(choices):
        raise PrunelabError(f"{where}: duplicate choices", "make the choices distinct")
    if not gold:
        raise PrunelabError(f"{where}: no correct answer among the choices ('{fields['answer']}')",
                            "give the correct choice's index or exact text")
    return choices, gold
