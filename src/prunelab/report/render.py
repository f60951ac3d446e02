"""The report of a study as self-contained HTML and as Markdown, rebuilt from the store.

HTML: images inline as base64 PNG, no scripts, no external links, every string that comes from
a model, a task or a recipe escaped. Markdown: the same tables, images as files beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time

from prunelab.report.sections import Section, Table, build_sections
from prunelab.study.results import Run

__all__ = ["Section", "Table", "sections", "summary_json", "to_html", "to_markdown"]


def sections(run: Run) -> list[Section]:
    """The report's sections for this run, in order (`prunelab.report.sections`)."""
    return build_sections(run)


# -- HTML -------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f3f3f3}
img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}figcaption{color:#555}"""


def to_html(title: str, secs: list[Section]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in secs:
        parts.append(f"<h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        for caption, png in s.images:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        for t in s.tables:
            parts.append(f"<h3>{e(t.title)}</h3><table><tr>"
                         + "".join(f"<th>{e(h)}</th>" for h in t.headers) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                      for row in t.rows]
            parts.append("</table>")
        if s.pre:
            parts.append(f"<pre>{e(s.pre)}</pre>")
    parts.append(f"<p><small>Written by prunelab on "
                 f"{e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</small></p></body></html>")
    return "\n".join(parts)


# -- Markdown ---------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    # Keep table structure intact whatever a task or model name contains.
    return _md_text(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


# Where Markdown starts raw HTML (CommonMark): `<` before a tag name, `/`, `!` or `?`. A `<`
# anywhere else ("p < 0.05") is text already and is left as it is.
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: str) -> str:
    """Text that may carry data (task names and texts, model names) with raw HTML made
    inert: Markdown viewers render raw HTML, so a task's `<script>` would run there."""
    return _HTML_START.sub("&lt;", str(text))


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, which cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(title: str, secs: list[Section], image_dir: str) -> tuple[str, dict[str, bytes]]:
    lines, files = [f"# {_md_text(title)}", ""], {}
    for s in secs:
        lines += [f"## {_md_text(s.title)}", ""]
        for t in s.text:
            lines += [_md_text(t), ""]
        for caption, png in s.images:
            name = f"fig{len(files) + 1}.png"
            files[name] = png
            lines += [f"![{_md_cell(caption)}]({image_dir}/{name})", ""]
        for t in s.tables:
            lines += [f"### {_md_text(t.title)}", "",
                      "| " + " | ".join(map(_md_cell, t.headers)) + " |",
                      "|" + "---|" * len(t.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        if s.pre:
            fence = _fence(s.pre)
            lines += [f"{fence}yaml", s.pre.rstrip(), fence, ""]
    return "\n".join(lines), files


def summary_json(run: Run) -> dict:
    """The verdicts in machine-readable form (written beside the report)."""
    clean = _finite(json.loads(json.dumps(run.analysis.verdicts, default=str)))
    return {"recipe": run.recipe.name, "points": len(run.points),
            "total_points": run.total_points, "verdicts": clean}


def _finite(value):
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
