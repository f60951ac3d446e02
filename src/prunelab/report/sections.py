"""The report's sections: one small protocol, built in order from a run.

A section builder is a function `build(run) -> Section | list[Section] | None` registered
with `@register_section(order=...)`; the report shows every section it returns, by order
(None or an empty list: the run has nothing for it). A measure of a study brings its own
sections the same way (`Measure.report`, placed at `Measure.report_order`), so a new measure
or a new section is one file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prunelab.errors import PrunelabError


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, png)
    pre: str | None = None


Builder = Callable[[object], "Section | list[Section] | dict | list[dict] | None"]
SECTIONS: dict[str, tuple[float, Builder]] = {}


def register_section(order: float, name: str | None = None) -> Callable[[Builder], Builder]:
    """Register a section builder at `order` (the built-in ones sit at multiples of 10);
    a name (default: the function's) taken twice is refused."""

    def add(build: Builder) -> Builder:
        key = name or build.__name__
        if key in SECTIONS:
            raise PrunelabError(f"a report section named {key!r} is already registered",
                                "give the new section another name")
        SECTIONS[key] = (order, build)
        return build

    return add


def unregister_section(name: str) -> None:
    SECTIONS.pop(name, None)


def build_sections(run) -> list[Section]:
    """Every registered section and every measure's, in order, for this run."""
    from prunelab.study.measures import MEASURES

    builders = list(SECTIONS.values()) + [(m.report_order, m.report) for m in MEASURES.values()
                                          if m.report_order is not None]
    out: list[Section] = []
    for _, build in sorted(builders, key=lambda entry: entry[0]):
        found = build(run)
        for section in found if isinstance(found, list) else [found]:
            if section is not None:
                out.append(as_section(section))
    return out


def as_section(section: Section | dict) -> Section:
    """A Section, from a Section or the plain dict of `fmt.section`."""
    if isinstance(section, Section):
        return section
    return Section(section["title"], section["text"], [Table(*t) for t in section["tables"]],
                   section["images"], section.get("pre"))
