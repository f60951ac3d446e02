"""The study report: `build_report(run_dir)` writes report.html and report.md from the store.

Both are rebuilt from the SQLite store alone, so `prunelab report RUN_DIR` works on a finished
run, on a partial one, and on one copied from another machine.
"""

from __future__ import annotations

from pathlib import Path

from prunelab.paths import atomic_dir, atomic_file, write_json_atomic
# The built-in sections register themselves (`report.sections`), in report order.
from prunelab.report import core, divergence, calibration, refusal, physical  # noqa: F401,E402,I001

IMAGE_DIR = "report_files"


def build_report(run_dir: str | Path) -> dict[str, Path]:
    from prunelab.study.results import load_run
    from prunelab.report.render import sections, summary_json, to_html, to_markdown

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    try:
        title = f"Junk DNA study: {run.recipe.name}"
        secs = sections(run)
        markdown, images = to_markdown(title, secs, IMAGE_DIR)
        with atomic_dir(run_dir / IMAGE_DIR, overwrite=True) as tmp:
            for name, png in images.items():
                (tmp / name).write_bytes(png)
        paths = {"html": run_dir / "report.html", "md": run_dir / "report.md",
                 "json": run_dir / "summary.json"}
        with atomic_file(paths["md"]) as handle:
            handle.write(markdown)
        with atomic_file(paths["html"]) as handle:
            handle.write(to_html(title, secs))
        write_json_atomic(paths["json"], summary_json(run))
        return paths
    finally:
        run.store.close()
