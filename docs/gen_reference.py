"""The reference pages, written from the code each time the site is built.

Each function returns one page's Markdown. They read only public names (the typer app
`prunelab.cli.app`, the method, stage and task registries, the recipe's pydantic models) and
walk whatever those hold, so a command, method, option, task or recipe field added in the
code appears here without anyone editing a page, and one that is renamed or removed
disappears. `docs/hooks.py` hands these pages to mkdocs; `tests/test_docs.py` checks them.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from typing import Any

PAGES = {
    "reference/cli.md": "cli_page",
    "reference/recipe.md": "recipe_page",
    "reference/methods.md": "methods_page",
    "reference/tasks.md": "tasks_page",
}

GENERATED_NOTE = ("*This page is generated from the code when the site is built "
                  "(`docs/gen_reference.py`); edit the code, not the page.*")


def pages() -> dict[str, str]:
    """Every generated page by its path under docs/."""
    this = sys.modules[__name__]
    return {path: getattr(this, name)() for path, name in PAGES.items()}


def _cell(text: Any) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _first_paragraph(doc: str | None) -> str:
    doc = inspect.cleandoc(doc or "")
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _paragraphs(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").strip()


# ---------------------------------------------------------------------------------------------
# The command line


def _is_group(command: Any) -> bool:
    # click's Group and typer's own (vendored-click) group both keep their commands in a dict
    return isinstance(getattr(command, "commands", None), dict)


def _context(command: Any, name: str, parent: Any = None) -> Any:
    return command.context_class(command, info_name=name, parent=parent)


def _walk(command: Any, path: list[str], parent: Any = None):
    """(path, command, context) for every command under `command`, depth first, by name."""
    ctx = _context(command, path[-1], parent)
    yield path, command, ctx
    if _is_group(command):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from _walk(sub, path + [name], ctx)


def cli_commands() -> list[tuple[str, Any, Any]]:
    """("prunelab prune", command, context) for the root and every (sub)command."""
    import typer

    from prunelab.cli import app

    root = typer.main.get_command(app)
    return [(" ".join(path), command, ctx) for path, command, ctx in _walk(root, ["prunelab"])]


def _param_rows(command: Any, ctx: Any) -> list[tuple[str, str, str]]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is None:  # click's plain arguments carry no help record
            record = (param.human_readable_name, "")
        names, help_text = record
        kind = getattr(param, "param_type_name", "option")
        rows.append((kind, names, help_text))
    return rows


def cli_page() -> str:
    lines = ["# Command line", "", GENERATED_NOTE, "",
             "Every command answers `--help` with the same text. Bad input prints one line "
             "naming the problem and the fix, exits with status 2 and writes nothing.", ""]
    commands = cli_commands()
    root_path, root, _ = commands[0]
    lines += [_paragraphs(root.help), "", "| command | what it does |", "|---|---|"]
    for path, command, _ in commands[1:]:
        anchor = path.replace(" ", "-")
        lines.append(f"| [`{path}`](#{anchor}) | {_cell(command.get_short_help_str(200))} |")
    for path, command, ctx in commands[1:]:
        anchor = path.replace(" ", "-")
        depth = "#" * min(2 + path.count(" ") - 1, 4)
        lines += ["", f"{depth} `{path}` {{#{anchor}}}", "", "```text",
                  command.get_usage(ctx).strip(), "```", ""]
        if command.help:
            lines += [_paragraphs(command.help), ""]
        rows = _param_rows(command, ctx)
        if rows:
            lines += ["| argument or option | kind | help |", "|---|---|---|"]
            lines += [f"| `{_cell(names)}` | {kind} | {_cell(help_text)} |"
                      for kind, names, help_text in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Pruning and quantization methods


def _method_modules_doc(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return _first_paragraph(getattr(module, "__doc__", None))


def methods_page() -> str:
    from prunelab.methods import list_methods, option_help

    methods = list_methods()
    lines = ["# Methods", "", GENERATED_NOTE, "",
             "`prunelab methods` prints the same list. Options are given as "
             "`--option KEY=VALUE` on the command line, keyword arguments in Python "
             "(`prunelab.prune(model, method=..., KEY=VALUE)`) and `options: {KEY: VALUE}` in a "
             "recipe; text is converted to each option's declared type.", "",
             "| method | what it does | N:M | statistics |", "|---|---|---|---|"]
    for cls in methods:
        stats = ", ".join(getattr(cls, "statistics", ()) or ()) or "none"
        nm = "yes" if getattr(cls, "supports_nm", True) else "no"
        lines.append(f"| [`{cls.name}`](#{cls.name}) | {_cell(getattr(cls, 'summary', ''))} "
                     f"| {nm} | {_cell(stats)} |")
    for cls in methods:
        lines += ["", f"## `{cls.name}` {{#{cls.name}}}", "",
                  _cell(getattr(cls, "summary", "")), ""]
        about = _method_modules_doc(cls)
        if about:
            lines += [about, ""]
        facts = [f"module `{cls.__module__}`"]
        if getattr(cls, "statistics", ()):
            facts.append("statistics per block: " + ", ".join(f"`{s}`" for s in cls.statistics))
        if getattr(cls, "planning_statistics", ()):
            facts.append("statistics on the dense model: "
                         + ", ".join(f"`{s}`" for s in cls.planning_statistics))
        if getattr(cls, "quantizes", False):
            facts.append("quantizes (keeps every weight, writes a rounded one)")
        if not getattr(cls, "supports_nm", True):
            facts.append("no N:M patterns")
        lines += ["; ".join(facts) + ".", ""]
        options = option_help(cls)
        if options:
            lines += ["| option | type | default | help |", "|---|---|---|---|"]
            for name, type_name, default, help_text in options:
                shown = "required" if default is _MISSING else f"`{default!r}`"
                lines.append(f"| `{name}` | {_cell(type_name)} | {_cell(shown)} | "
                             f"{_cell(help_text)} |")
        else:
            lines.append("No options.")
    return "\n".join(lines) + "\n"


try:
    from dataclasses import MISSING as _MISSING
except ImportError:  # pragma: no cover
    _MISSING = object()


# ---------------------------------------------------------------------------------------------
# Tasks


def tasks_page() -> str:
    from prunelab.tasks.registry import list_tasks

    by_family: dict[str, list] = {}
    for task in list_tasks():
        by_family.setdefault(task.family, []).append(task)
    lines = ["# Tasks", "", GENERATED_NOTE, "",
             "Every registered task family, its difficulty axis and its levels in order "
             "(rank 0 is the easiest). Select a family (`arithmetic`), one level "
             "(`arithmetic:3`) or a local task file; `prunelab tasks` prints sizes too "
             "(it reads the data). How tasks are scored and how to write your own: "
             "[Tasks and local task files](../guides/tasks.md).", "",
             "| family | axis | levels (rank) | kind | metric | shots | licence |",
             "|---|---|---|---|---|---|---|"]
    for family, tasks in by_family.items():
        first = tasks[0]
        levels = ", ".join(f"{t.level} ({t.level_rank})" for t in tasks)
        shots = sorted({t.shots for t in tasks})
        lines.append(f"| `{family}` | {_cell(first.axis)} | {_cell(levels)} | "
                     f"{_cell(', '.join(sorted({t.kind for t in tasks})))} | "
                     f"{_cell(', '.join(sorted({t.metric for t in tasks})))} | "
                     f"{_cell(', '.join(map(str, shots)))} | {_cell(first.license)} |")
    lines += ["", "## Sources and descriptions", ""]
    for family, tasks in by_family.items():
        first = tasks[0]
        text = first.description or ""
        source = f" Source: {first.source}." if first.source else ""
        lines.append(f"- **`{family}`**: {_cell(text)}{_cell(source)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The recipe schema


def _strip_annotated(tp: Any) -> tuple[Any, list]:
    metadata: list = []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        metadata += extra
    return tp, metadata


def _constraint_text(metadata: list) -> str:
    parts = []
    for item in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"),
                           ("min_length", "length ≥"), ("max_length", "length ≤"),
                           ("pattern", "matches")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        for inner in getattr(item, "metadata", None) or []:  # a FieldInfo inside Annotated
            parts.append(_constraint_text([inner]))
    return ", ".join(p for p in parts if p)


def _type_text(tp: Any, models: list) -> str:
    """A readable type; pydantic models met on the way are added to `models`."""
    from pydantic import BaseModel

    tp, metadata = _strip_annotated(tp)
    constraint = _constraint_text(metadata)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp not in models:
            models.append(tp)
        text = f"[{tp.__name__}](#{tp.__name__.lower()})"
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join("none" if a is type(None) else _type_text(a, models) for a in args)
    elif origin is typing.Literal:
        text = " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    elif origin in (list, tuple, set):
        text = f"list of {_type_text(args[0], models)}" if args else "list"
    elif origin is dict:
        text = (f"mapping {_type_text(args[0], models)} → {_type_text(args[1], models)}"
                if args else "mapping")
    elif tp is Any:
        text = "any"
    elif isinstance(tp, type):
        text = {"str": "text", "int": "integer", "float": "number",
                "bool": "true/false"}.get(tp.__name__, tp.__name__)
    else:
        text = str(tp).replace("typing.", "")
    return f"{text} ({constraint})" if constraint else text


def _default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        if hasattr(value, "model_dump"):
            return "its defaults"
        return f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{field.default!r}`"


def _model_section(model: type, models: list, title: str | None = None) -> list[str]:
    name = title or model.__name__
    lines = ["", f"## {name} {{#{model.__name__.lower()}}}", ""]
    doc = model.__doc__
    if doc and doc != getattr(model.__mro__[1], "__doc__", None) and "A base class" not in doc:
        lines += [_paragraphs(doc), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for field_name, field in model.model_fields.items():
        type_text = _type_text(field.annotation, models)
        constraint = _constraint_text(field.metadata)
        if constraint:
            type_text += f" ({constraint})"
        lines.append(f"| `{field_name}` | {_cell(type_text)} | {_cell(_default_text(field))} | "
                     f"{_cell(field.description or '')} |")
    return lines


def recipe_page() -> str:
    from prunelab.study.recipe import Recipe

    lines = ["# Recipe schema", "", GENERATED_NOTE, "",
             "A recipe is YAML mapped one to one onto these models: every key is a field below, "
             "unknown keys are refused, and every problem is listed with its path "
             "(`compressions[1].sparsity[2]`) before any work. `prunelab study RECIPE --set "
             "PATH=VALUE` overrides one field. How to write one: "
             "[Studies and recipes](../guides/studies.md)."]
    models: list = [Recipe]
    done: list = []
    while len(done) < len(models):  # breadth first: sections follow the recipe's order
        model = next(m for m in models if m not in done)
        done.append(model)
        lines += _model_section(model, models, "Recipe (the top level)" if model is Recipe
                                else None)
    lines += _stage_sections(models)
    for model in models:  # the models only stages use (a stage's calibration patch)
        if model not in done:
            done.append(model)
            lines += _model_section(model, models)
    return "\n".join(lines) + "\n"


def _stage_sections(models: list) -> list[str]:
    try:
        from prunelab.study import stages
    except ImportError:  # pragma: no cover
        return []
    kinds = getattr(stages, "STAGE_KINDS", None) or {}
    if not kinds:
        return []
    lines = ["", "## Stages", "",
             "A compression's `stages:` entries, chosen by `kind` (default `prune`); any field "
             "may be swept (`sweep: {stages[0].sparsity: [0.5, 0.7]}`)."]
    for kind, cls in kinds.items():
        section = _model_section(cls, models, f"Stage `{kind}`")
        lines += section
    return lines
