"""What a study measures, one registered `Measure` per file.

A measure names its recipe section (a pydantic model, and the `Recipe` field it maps to), runs
on the model a point was evaluated on (through the backend's model handle), says what it
stores and adds its own section to the report, and prices itself for the dry run. Two scopes:
- "compression": once per compressed model (dense included when `on_dense`), right after it
  is built: perplexity, divergence, refusal. Its result is stored in the run's `measures`
  table under the measure's name (or in a column of the compressions table, `column`).
- "point": once per task level on each compressed model: the task evaluation (prompted tasks)
  and the encoder track's fine-tune evaluation. It yields the point's examples and summary.

A new measure is one file: subclass `Measure`, decorate it with `@register_measure`. The
runner, the store, the export and the report find it in `MEASURES`; a section that no
built-in `Recipe` field declares is added to the recipe schema (`recipe_model`), and its
`report` is shown at `report_order`. (The built-in measures' report sections live in
prunelab/report/, registered the same way, since study/ never imports the report.)
A distributed executor's workers must import the module that registers a measure too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    from prunelab.study.plan import CompressionPoint, TaskInfo


class Measure:
    """One thing a study measures. Subclasses set the class attributes and override `run`
    (the real backend), `fake` (`prunelab.study.testing.FakeBackend`) and `cost`."""

    name: ClassVar[str]  # its kind in the store's `measures` table
    scope: ClassVar[Literal["compression", "point"]] = "compression"
    # The recipe section: the `Recipe` field it maps to and its typed model (None: a measure
    # the study always takes, as the task evaluation, configured by `eval:`).
    recipe_field: ClassVar[str | None] = None
    section: ClassVar[type[BaseModel] | None] = None
    on_dense: ClassVar[bool] = True  # also measured on the dense model
    # A column of the compressions table that holds the result instead of `measures`.
    column: ClassVar[str | None] = None
    # Point measures: kinds of records its summary carries that are stored beside the point
    # (in the `measures` table, keyed by the point's key) rather than in its row.
    point_records: ClassVar[tuple[str, ...]] = ()
    # Its place in the report (see `prunelab.report.sections`); None: it adds none.
    report_order: ClassVar[float | None] = None

    def config(self, recipe) -> Any:
        """Its recipe section (None: not asked for in this recipe)."""
        if self.recipe_field is None:
            return recipe.eval
        return getattr(recipe, self.recipe_field, None)

    def applies(self, task: TaskInfo) -> bool:
        """Point measures: whether it scores this task level."""
        return False

    def check(self, config: Any) -> list[tuple[str, str]]:
        """(yaml path, problem) for what the schema cannot see (a missing file), before any
        model is loaded; only the real backend asks."""
        return []

    def run(self, backend, handle, config: Any, work=None) -> Any:
        """The measurement on the real backend's model handle (`prunelab.study.backend`)."""
        raise NotImplementedError

    def fake(self, backend, handle, config: Any, work=None) -> Any:
        """What the fake backend reports (tests): by default the real `run`."""
        return self.run(backend, handle, config, work)

    def cost(self, recipe, config: Any, point: CompressionPoint, per_token: float,
             params: float, task: TaskInfo | None = None) -> float:
        """Estimated seconds on a 2-core CPU (see `prunelab.study.estimate`)."""
        return 0.0

    def export(self, data: Any) -> dict[str, Any]:
        """Its stored result as named values for the tidy export (`study/export.py`): by
        default its numbers and strings, nested mappings flattened as `a.b`."""
        return _flatten(data if isinstance(data, dict) else {self.name: data})

    def report(self, run) -> list:
        """Its report sections (`prunelab.report.sections.Section`), built from the store."""
        return []


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (int, float, str)):
            out[f"{prefix}{key}"] = value
    return out


MEASURES: dict[str, Measure] = {}


def register_measure(cls: type[Measure]) -> type[Measure]:
    """Register a measure class (one instance); a name taken twice is refused."""
    if cls.name in MEASURES:
        raise PrunelabError(f"a measure named {cls.name!r} is already registered",
                            "give the new measure another name")
    MEASURES[cls.name] = cls()
    return cls


def unregister_measure(name: str) -> None:
    """Forget a measure (for tests that register a toy one)."""
    MEASURES.pop(name, None)


def compression_measures() -> list[Measure]:
    return [m for m in MEASURES.values() if m.scope == "compression"]


def point_measure(task: TaskInfo) -> Measure:
    """The measure that scores this task level."""
    for measure in MEASURES.values():
        if measure.scope == "point" and measure.applies(task):
            return measure
    raise PrunelabError(f"no measure scores task {task.name} (kind {task.kind})",
                        "register a point measure for this kind of task")


def stored_kinds() -> list[str]:
    """The kinds of compression measures kept in the store's `measures` table."""
    return [m.name for m in compression_measures() if m.column is None]


# The built-in measures, in the order they run on a compressed model and appear in the report.
from prunelab.study.measures import perplexity  # noqa: E402,F401,I001
from prunelab.study.measures import divergence  # noqa: E402,F401
from prunelab.study.measures import refusal  # noqa: E402,F401
from prunelab.study.measures import task  # noqa: E402,F401
from prunelab.study.measures import finetune  # noqa: E402,F401
from prunelab.study.measures import physical  # noqa: E402,F401
