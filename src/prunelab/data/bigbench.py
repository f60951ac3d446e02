"""The BIG-bench benchmark data, taken from the `bigbench==1.0.0` source archive on PyPI.

The archive (358 MB) is downloaded once; the task folders prunelab uses are extracted into
`$PRUNELAB_HOME/bigbench/<task>/` in one pass. Code in BIG-bench is Apache-2.0; each task's
data keeps its own licence, which its README states (see `task_readme`).
"""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.paths import cache_dir, cache_lock
from prunelab.zoo.fetch import download_distribution

BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
ATTRIBUTION = (
    "BIG-bench (Srivastava et al., 2022, arXiv:2206.04615), bigbench==1.0.0 from PyPI; "
    "code Apache-2.0, each task's data under the licence its README states"
)

# Extracted together on first use, so that the archive is decompressed once, not per task.
COMMON_TASKS = (
    "arithmetic", "logical_deduction", "tracking_shuffled_objects", "squad_shifts",
    "multiemo", "qa_wikidata", "elementary_math_qa", "unit_conversion", "strategyqa",
    "truthful_qa", "social_iqa", "formal_fallacies_syllogisms_negation", "hyperbaton", "winowhy",
)
_MEMBER_PREFIX = "bigbench/benchmark_tasks/"
_KEEP_SUFFIXES = (".json", ".md")


def task_dir(task: str) -> Path:
    """The extracted folder of one BIG-bench task, extracting it on first use."""
    root = cache_dir("bigbench")
    final = root / task
    if final.is_dir():
        return final
    with cache_lock("bigbench-extract"):
        if final.is_dir():
            return final
        wanted = {task} | {t for t in COMMON_TASKS if not (root / t).is_dir()}
        _extract(wanted, root)
    if not final.is_dir():
        raise PrunelabError(
            f"BIG-bench has no task named {task!r}",
            "see the task list in the bigbench==1.0.0 archive (bigbench/benchmark_tasks/)",
        )
    return final


def _extract(tasks: set[str], root: Path) -> None:
    archive = download_distribution(BIGBENCH_REQUIREMENT)
    print(f"prunelab: extracting BIG-bench tasks {', '.join(sorted(tasks))} ...", file=sys.stderr)
    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                _, _, inner = member.name.partition("/")  # strip "bigbench-1.0.0/"
                if not inner.startswith(_MEMBER_PREFIX) or not inner.endswith(_KEEP_SUFFIXES):
                    continue
                relative = inner[len(_MEMBER_PREFIX):]
                if relative.split("/", 1)[0] not in tasks or ".." in relative.split("/"):
                    continue
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
        for folder in staging.iterdir():
            destination = root / folder.name
            if not destination.exists():
                folder.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def task_readme(task: str) -> str:
    readme = task_dir(task) / "README.md"
    return readme.read_text(encoding="utf-8") if readme.exists() else ""
