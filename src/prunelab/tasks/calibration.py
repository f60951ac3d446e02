"""Task-specific calibration text: a task's own inputs, from items the evaluation does not use.

Khanal & Capone (2024) found calibration on task-like data (Alpaca) better for downstream
tasks than general text (C4). A calibration source `task:SELECTOR` (a family such as
`task:arithmetic`, or one level, `task:arithmetic:2`) is the text of those task levels'
prompts, each item as the model would be asked it with no demonstrations (the template's
query; a text-scoring task's text), joined by blank lines.

Only items the evaluation does not select are used. The evaluation picks `limit` items of
each level by `Task.select(limit, seed)`, so the held-out items depend on that limit and seed:
`task:SELECTOR?limit=N&seed=S` names them (a study fills them in from its `eval:` section;
`prunelab prune --calib-source` takes the source as written). Without `limit` the
evaluation is taken to use every item, which leaves none: that is refused, as is any source
with fewer than MIN_HELD_OUT_ITEMS items left.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from prunelab.data.sources import TEXT_PROVIDERS
from prunelab.errors import PrunelabError

PREFIX = "task:"
# Fewer held-out prompts than this make calibration windows that repeat the same few items.
MIN_HELD_OUT_ITEMS = 8


def is_task_source(source) -> bool:
    return str(source).startswith(PREFIX)


def with_held_out(source: str, limit: int | None, seed: int) -> str:
    """`task:SELECTOR` with the evaluation's limit and seed (an explicit one is kept)."""
    selector, sep, _ = source.partition("?")
    if sep:
        return source
    return f"{selector}?seed={seed}" if limit is None else f"{selector}?limit={limit}&seed={seed}"


def parse(source: str) -> tuple[str, int | None, int]:
    """(selector, limit, seed) of `task:SELECTOR[?limit=N&seed=S]`."""
    body = str(source)[len(PREFIX):]
    selector, _, query = body.partition("?")
    fix = "write e.g. task:arithmetic?limit=100&seed=0 (limit and seed of the evaluation)"
    if not selector.strip():
        raise PrunelabError(f"calibration source {source!r} names no task", fix)
    try:
        params = parse_qs(query, strict_parsing=bool(query))
    except ValueError:
        raise PrunelabError(f"calibration source {source!r}: cannot read {query!r}", fix) from None
    unknown = set(params) - {"limit", "seed"}
    if unknown:
        raise PrunelabError(f"calibration source {source!r}: unknown "
                            f"{', '.join(sorted(unknown))}", fix)
    try:
        limit = int(params["limit"][-1]) if "limit" in params else None
        seed = int(params["seed"][-1]) if "seed" in params else 0
    except ValueError:
        raise PrunelabError(f"calibration source {source!r}: limit and seed must be integers",
                            fix) from None
    if limit is not None and limit < 1:
        raise PrunelabError(f"calibration source {source!r}: limit must be 1 or more", fix)
    return selector.strip(), limit, seed


def held_out(source: str) -> list[tuple[object, object]]:
    """(task, item) pairs the evaluation of `source`'s limit and seed does not select."""
    from prunelab.tasks.registry import get_tasks

    selector, limit, seed = parse(source)
    pairs = []
    for task in get_tasks([selector]):
        used = set() if limit is None else {it.id for it in task.select(min(limit, task.size),
                                                                        seed)}
        if limit is None or limit >= task.size:  # the evaluation uses the whole level
            continue
        pairs += [(task, it) for it in task.items if it.id not in used]
    return pairs


def check(source: str) -> int:
    """The number of held-out items; refuses a source with fewer than MIN_HELD_OUT_ITEMS."""
    pairs = held_out(source)
    selector, limit, _ = parse(source)
    if len(pairs) < MIN_HELD_OUT_ITEMS:
        used = "all items" if limit is None else f"{limit} items per level"
        raise PrunelabError(
            f"calibration task {selector} has {len(pairs)} items left after the evaluation's "
            f"{used}, fewer than {MIN_HELD_OUT_ITEMS}",
            "evaluate fewer items (eval.limit, or ?limit=N in the source) or calibrate on a "
            "larger task")
    return len(pairs)


def task_text(source: str) -> str:
    """The held-out items' prompts, one per paragraph."""
    check(source)
    texts = []
    for task, item in held_out(source):
        text = item.text if task.kind == "rolling" else task.template.query(item)
        if text.strip():
            texts.append(text.strip())
    return "\n\n".join(texts)


TEXT_PROVIDERS[PREFIX] = task_text  # `load_text("task:...")` and so calibration windows
