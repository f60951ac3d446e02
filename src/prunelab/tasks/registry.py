"""Find tasks by selector: a family ("arithmetic"), one level ("arithmetic:3"), a full task
name, or a local spec file ("my_task.yaml"). Built-in tasks are declared in `suite.py`."""

from __future__ import annotations

from functools import lru_cache

from prunelab.errors import PrunelabError
from prunelab.tasks.base import Task

_EXTRA: dict[str, Task] = {}


@lru_cache(maxsize=1)
def _builtin() -> dict[str, Task]:
    from prunelab.tasks.classification import finetune_tasks
    from prunelab.tasks.suite import builtin_tasks

    return {t.name: t for t in builtin_tasks() + finetune_tasks()}


def _all() -> dict[str, Task]:
    return {**_builtin(), **_EXTRA}


def register(task: Task) -> Task:
    """Add a task (e.g. one built in Python) so that selectors find it."""
    _EXTRA[task.name] = task
    return task


def list_tasks() -> list[Task]:
    """Every known task, grouped by family, levels in order of difficulty."""
    tasks = list(_all().values())
    families = list(dict.fromkeys(t.family for t in tasks))
    return sorted(tasks, key=lambda t: (families.index(t.family), t.level_rank))


def families() -> list[str]:
    return list(dict.fromkeys(t.family for t in list_tasks()))


def get_tasks(selectors: list[str | Task] | str) -> list[Task]:
    """The tasks named by `selectors` (comma-separated string, or a list of selectors and
    Task objects), in order, without duplicates."""
    from prunelab.tasks.local import is_spec_path, load_task_file

    if isinstance(selectors, (str, Task)):
        selectors = [selectors]
    # Task objects pass through as they are (e.g. one built in Python, not registered)
    wanted = [s if isinstance(s, Task) else s.strip()
              for sel in selectors for s in ([sel] if isinstance(sel, Task) else sel.split(","))
              if isinstance(s, Task) or s.strip()]
    if not wanted:
        raise PrunelabError("no task selected", "pass --tasks, e.g. --tasks arithmetic")
    known = _all()
    by_family: dict[str, list[Task]] = {}
    for task in list_tasks():
        by_family.setdefault(task.family, []).append(task)
    chosen: dict[str, Task] = {}
    for selector in wanted:
        if isinstance(selector, Task):
            found = [selector]
        elif is_spec_path(selector):
            found = load_task_file(selector)
        elif selector in known:
            found = [known[selector]]
        elif selector in by_family:
            found = by_family[selector]
        elif ":" in selector and selector.split(":", 1)[0] in by_family:
            family, level = selector.split(":", 1)
            levels = ", ".join(str(t.level) for t in by_family[family])
            raise PrunelabError(f"task family {family!r} has no level {level!r}",
                                f"use one of its levels: {levels}")
        elif selector.endswith((".yaml", ".yml", ".json")):
            raise PrunelabError(f"task spec file {selector} does not exist", "check the path")
        else:
            raise PrunelabError(f"unknown task {selector!r}",
                                f"use a family ({', '.join(by_family)}), family:level, or a "
                                "spec file; `prunelab tasks` lists them")
        for task in found:
            chosen.setdefault(task.name, task)
    return list(chosen.values())
