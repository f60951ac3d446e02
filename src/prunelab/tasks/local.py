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
runs, so a bad file fails fast with its line number; so are the spec's values (types, shots
against the rows there are to draw demonstrations from, template fields) and each prompted
field's size (MAX_FIELD_CHARS: a prompt must fit a model's context; long texts belong in a
"rolling" task, scored in windows).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.tasks.base import GENERATE_METRICS, PROMPTED_KINDS, Item, Task, Template
from prunelab.tasks.loaders import read_rows, read_text

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_SPEC_KEYS = {"name", "kind", "data", "fields", "family", "axis", "level", "level_rank", "shots",
              "metric", "max_new_tokens", "license", "source", "description", "template", "levels",
              "mc_score", "paired_levels"}
_DEFAULT_FIELDS = {"id": "id", "input": "input", "choices": "choices", "answer": "answer",
                   "targets": "targets", "text": "text", "context": "context"}
# The metrics each kind of task can be scored by (its default first).
_METRICS = {"mc": ("accuracy",), "generate": ("exact_match", *sorted(set(GENERATE_METRICS)
                                                                      - {"exact_match"})),
            "rolling": ("bits_per_byte",)}
# What each template string is formatted with (`Template`); prefix and separator are not
# formatted, so braces in them are plain text.
_TEMPLATE_FIELDS = {"input_format": ("input", "context"), "answer_format": ("answer",),
                    "prefix": None, "separator": None}
# The longest prompted field (input, context, choice, target) a task may hold. Every prompt
# must fit the model's context, a few thousand to a few ten thousand tokens; a field far
# beyond that would be tokenised at length only to be refused. Rolling texts have no limit:
# they are scored in windows.
MAX_FIELD_CHARS = 200_000


def is_spec_path(selector: str) -> bool:
    return selector.endswith(SPEC_SUFFIXES) and _expanded(selector).exists()


def _expanded(path: str | Path) -> Path:
    """`path` with "~" expanded; as written where it names no user ("~nobody/x")."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def load_task_file(path: str | Path) -> list[Task]:
    """All tasks (levels) a spec file declares, with their data loaded and validated."""
    path = _expanded(path).resolve()
    spec = _read_spec(path)
    levels = spec.pop("levels", None) or [{}]
    if not isinstance(levels, list) or not all(isinstance(lv, dict) for lv in levels):
        raise PrunelabError(f"{path}: 'levels' must be a list of mappings",
                            "write levels: [{level: easy, data: easy.jsonl}, ...]")
    for number, overrides in enumerate(levels):
        _check_keys(path, overrides, _SPEC_KEYS - {"levels"}, f"levels[{number}]")
    tasks = []
    for rank, overrides in enumerate(levels):
        merged = {**spec, **overrides}
        tasks.append(_build(path, merged, default_rank=rank, several=len(levels) > 1))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise PrunelabError(f"{path}: levels share a name ({names})", "give each level its own 'level'")
    return tasks


def _read_spec(path: Path) -> dict:
    text = read_text(path, "task spec")
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
    _check_keys(path, spec, _SPEC_KEYS, "the spec")
    return spec


def _check_keys(path: Path, mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(mapping) - allowed)
    if unknown:
        raise PrunelabError(f"{path}: unknown key(s) {unknown} in {where}",
                            f"use only {sorted(allowed)}")


def _require(path: Path, spec: dict, key: str) -> Any:
    if spec.get(key) in (None, ""):
        raise PrunelabError(f"{path}: the spec has no '{key}'", f"add '{key}:' to the spec")
    return _scalar(path, spec, key)


def _scalar(path: Path, spec: dict, key: str, default: Any = None) -> Any:
    """A value written as one word or number, not a list or mapping."""
    value = spec.get(key, default)
    if isinstance(value, (list, dict, set)):
        raise PrunelabError(f"{path}: '{key}' must be a single value, got {_kind(value)}",
                            f"write {key}: followed by one word or number")
    return value


def _integer(path: Path, spec: dict, key: str, default: int, minimum: int | None = None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PrunelabError(f"{path}: '{key}' must be a whole number, got {value!r}",
                            f"write e.g. {key}: {max(default, minimum or 0)}")
    if minimum is not None and value < minimum:
        raise PrunelabError(f"{path}: '{key}' is {value}; it must be {minimum} or more",
                            f"write {key}: {minimum} or more")
    return value


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", set: "a set"}.get(type(value),
                                                                 type(value).__name__)


def _build(path: Path, spec: dict, default_rank: int, several: bool) -> Task:
    name = str(_require(path, spec, "name"))
    kind = _require(path, spec, "kind")
    if kind not in PROMPTED_KINDS:
        raise PrunelabError(f"{path}: kind {kind!r} is not one of {list(PROMPTED_KINDS)}",
                            "use mc, generate or rolling")
    data = _expanded(str(_require(path, spec, "data")))
    data = data if data.is_absolute() else path.parent / data
    fields = _fields(path, spec.get("fields"))
    metric = _scalar(path, spec, "metric") or _METRICS[kind][0]
    if metric not in _METRICS[kind]:
        raise PrunelabError(f"{path}: metric {metric!r} is not one of {list(_METRICS[kind])}",
                            f"pick a metric of {kind} tasks, or leave metric out")
    template = _template(path, spec.get("template"), kind)
    mc_score = spec.get("mc_score", "mean")
    if mc_score not in ("mean", "sum"):
        raise PrunelabError(f"{path}: mc_score {mc_score!r} is not mean or sum", "use mean or sum")
    shots = _integer(path, spec, "shots", 0, minimum=0)
    if shots and kind == "rolling":
        raise PrunelabError(f"{path}: shots {shots} for a rolling task, which has no prompt",
                            "leave shots out: only mc and generate tasks take demonstrations")
    max_new_tokens = _integer(path, spec, "max_new_tokens", 16, minimum=1)
    level_rank = _integer(path, spec, "level_rank", default_rank)
    for key in ("family", "axis", "level", "license", "source", "description"):
        _scalar(path, spec, key)
    level = spec.get("level", default_rank if several else "default")
    family = str(spec.get("family") or name)
    items = _items(data, kind, fields)  # validate now: fail before any model runs
    _check_shots(path, shots, items)
    task = Task(
        name=f"{family}:{level}" if several or "family" in spec else name, family=family,
        axis=str(spec.get("axis", "none")), level=level,
        level_rank=level_rank, kind=kind,
        loader=lambda: items, template=template, metric=metric,
        shots=shots, max_new_tokens=max_new_tokens,
        mc_score=mc_score, paired_levels=_flag(path, spec, "paired_levels"),
        license=str(spec.get("license", "unknown (local file)")),
        source=str(spec.get("source", data)), description=str(spec.get("description", "")))
    return task


def _fields(path: Path, fields: Any) -> dict[str, str]:
    """Which row keys hold each part of an item (`fields: {input: question}`)."""
    fields = fields or {}
    if not isinstance(fields, dict):
        raise PrunelabError(f"{path}: 'fields' must be a mapping, got {_kind(fields)}",
                            "write fields: {input: question, choices: options}")
    _check_keys(path, fields, set(_DEFAULT_FIELDS), "fields")
    for key, value in fields.items():
        if not isinstance(value, str) or not value:
            raise PrunelabError(f"{path}: fields: {key} must name a key of the data rows, "
                                f"got {value!r}", f"write e.g. fields: {{{key}: {key}}}")
    return {**_DEFAULT_FIELDS, **fields}


def _template(path: Path, template: Any, kind: str) -> Template:
    """The spec's template, each string checked to format with what the task fills in."""
    template = template or {}
    if not isinstance(template, dict) or set(template) - set(_TEMPLATE_FIELDS):
        raise PrunelabError(f"{path}: 'template' must map input_format/answer_format/prefix/"
                            "separator to strings", "fix the template")
    for key, value in template.items():
        if not isinstance(value, str):
            raise PrunelabError(f"{path}: template {key} must be a string, got {value!r}",
                                "quote it")
        filled = _TEMPLATE_FIELDS[key]
        if filled is not None:
            _check_format(path, key, value, filled)
    built = Template(**template)
    if kind != "rolling":  # a rolling task has no prompt: its template is never used
        if not {"input", "context"} & _names(built.input_format):
            raise PrunelabError(f"{path}: template input_format {built.input_format!r} never "
                                "shows the item", "include {input}, e.g. 'Q: {input}\\nA:'")
        if "answer" not in _names(built.answer_format):
            raise PrunelabError(f"{path}: template answer_format {built.answer_format!r} "
                                "never shows the answer", "include {answer}, e.g. ' {answer}'")
    return built


def _names(format_string: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(format_string) if name}


def _check_format(path: Path, key: str, value: str, filled: tuple[str, ...]) -> None:
    """`value` formats with exactly the names `filled` (plain `{name}` fields)."""
    allowed = " and ".join("{" + name + "}" for name in filled)
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise PrunelabError(f"{path}: template {key} {value!r} is not a format string: {exc}",
                            "write literal braces as {{ and }}") from None
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in filled:
            hint = (f"use {allowed}; to fill {{{filled[0]}}} from a row's {field_name!r}, "
                    f"write fields: {{{filled[0]}: {field_name}}}"
                    if field_name.isidentifier() else f"use {allowed} only")
            raise PrunelabError(f"{path}: template {key} names {{{field_name}}}, but only "
                                f"{allowed} are filled in", hint)
        if "{" in (spec or "") or conversion not in (None, "r", "s", "a"):
            raise PrunelabError(f"{path}: template {key} {value!r}: field {{{field_name}}} has "
                                "a format it cannot take", f"write plain {allowed}")
    try:  # every filled value is a string, so one trial covers every item
        value.format(**{name: "x" for name in filled})
    except (ValueError, TypeError) as exc:
        raise PrunelabError(f"{path}: template {key} {value!r} does not format: {exc}",
                            f"write plain {allowed}") from None


def _check_shots(path: Path, shots: int, items: list[Item]) -> None:
    """Every item needs `shots` demonstrations: other items, with another input (see
    `Task.demos`), each with an answer."""
    if not shots:
        return
    answered = [item for item in items if item.answer]
    same_input = Counter(item.input for item in answered)
    fewest, item = min(((len(answered) - same_input[item.input], item) for item in items),
                       key=lambda pair: pair[0])
    if fewest < shots:
        raise PrunelabError(f"{path}: shots {shots} needs {shots} other items per item to "
                            f"draw demonstrations from, but item {item.id!r} has {fewest}",
                            f"lower shots to {fewest} or fewer, or add rows")


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
        context = row.get(fields["context"], "")
        if not isinstance(context, str):
            raise PrunelabError(f"{where}: '{fields['context']}' must be a string, got "
                                f"{_kind(context)}", "write the context as one string")
        if kind == "generate":
            targets = row.get(fields["targets"], row.get("target"))
            targets = [targets] if isinstance(targets, str) else targets
            if (not targets or not isinstance(targets, list)
                    or not all(isinstance(t, str) and t.strip() for t in targets)):
                raise PrunelabError(f"{where}: no target answer ('{fields['targets']}')",
                                    "give a non-empty string or list of strings")
            item = Item(id=item_id, input=text, targets=tuple(targets), context=context)
        else:
            choices, gold = _choices(row, fields, where)
            item = Item(id=item_id, input=text, choices=choices, gold=gold, context=context)
        _check_sizes(item, where, fields)
        items.append(item)
    return items


def _check_sizes(item: Item, where: str, fields: dict[str, str]) -> None:
    for key, values in (("input", [item.input]), ("context", [item.context]),
                        ("choices", item.choices), ("targets", item.targets)):
        longest = max((len(v) for v in values), default=0)
        if longest > MAX_FIELD_CHARS:
            raise PrunelabError(
                f"{where}: '{fields[key]}' holds {longest:,} characters, more than any prompt "
                f"can take (at most {MAX_FIELD_CHARS:,} per field)",
                "shorten it; a long text to score belongs in a kind: rolling task, read in windows")


def _choices(row: dict, fields: dict[str, str], where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if "target_scores" in row and fields["choices"] not in row:  # a BIG-bench row
        scores = row["target_scores"]
        if not isinstance(scores, dict) or not scores:
            raise PrunelabError(f"{where}: empty target_scores", "list at least two choices")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
                   for v in scores.values()):
            raise PrunelabError(f"{where}: target_scores must map each choice to a number",
                                'write e.g. {"Paris": 1, "Rome": 0}')
        if not all(scores):  # a JSON object's keys are strings; an empty one is no choice
            raise PrunelabError(f"{where}: every choice must be a non-empty string", "fix the choices")
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
