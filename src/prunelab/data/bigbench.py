"""The BIG-bench benchmark data: optional, used where it can be had.

Three ways to have it, tried in this order:
- `PRUNELAB_BIGBENCH` names a local copy: a git checkout of google/BIG-bench, an extracted
  `bigbench-1.0.0` archive, or its `bigbench/benchmark_tasks` folder; it is read in place.
- The task folders are already extracted into `$PRUNELAB_HOME/bigbench/<task>/`, or the
  `bigbench==1.0.0` source archive (358 MB) is already in the downloads cache.
- The package registry still serves that archive (asked once per process, cheaply: the
  index page lists it or not); it is then downloaded once and extracted in one pass.

Since December 2026 the public registry lists only `bigbench==0.0.1`, so on a fresh machine
none of these holds: `available()` says so, and everything that needs the data
(`task_dir`) refuses in one line naming the fix. Code in BIG-bench is Apache-2.0; each
task's data keeps its own licence, which its README states (see `task_readme`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.paths import cache_dir, cache_lock
from prunelab.zoo.fetch import download_distribution, find_download, index_url

BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
BIGBENCH_ARCHIVE = "bigbench-1.0.0.tar.gz"
ENV_VAR = "PRUNELAB_BIGBENCH"
# The refusal's fix, where the data cannot be had: a local copy, or data that needs none.
FIX = (f"set {ENV_VAR}=<a google/BIG-bench checkout or extracted {BIGBENCH_ARCHIVE}>, or "
       "use a source or task that needs none (`prunelab tasks` marks those that do)")
_PROBE_TIMEOUT_S = 15
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


@dataclass(frozen=True)
class Availability:
    """Whether the BIG-bench data can be had here, and from where (or why not)."""

    available: bool
    where: str  # "local copy ...", "extracted cache", "downloaded archive", "package registry"
    reason: str = ""  # why not, when not available


def local_tasks_root() -> Path | None:
    """The `benchmark_tasks` folder of the local copy `PRUNELAB_BIGBENCH` names, if set.

    Refuses in one line when the variable is set but names no BIG-bench copy."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    given = Path(value).expanduser()
    candidates = [given / "bigbench" / "benchmark_tasks", given / "benchmark_tasks", given]
    candidates += sorted(given.glob("bigbench-*/bigbench/benchmark_tasks"))
    for candidate in candidates:
        if (candidate / "arithmetic").is_dir():
            return candidate
    raise PrunelabError(
        f"{ENV_VAR}={value} is not a BIG-bench copy (no bigbench/benchmark_tasks/arithmetic "
        "in it)", f"point {ENV_VAR} at a git checkout of google/BIG-bench or an extracted "
        f"{BIGBENCH_ARCHIVE}, or unset it")


def _extracted(root: Path) -> bool:
    return any((root / task).is_dir() for task in COMMON_TASKS)


@lru_cache(maxsize=1)
def registry_serves_archive() -> bool:
    """Whether the package index lists the bigbench 1.0.0 source archive (asked once per
    process; an unreachable index counts as no)."""
    page = f"{index_url().rstrip('/')}/bigbench/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(str(f.get("filename", "")).lower() == BIGBENCH_ARCHIVE for f in files)


def availability() -> Availability:
    """Where the BIG-bench data would come from, cheapest first; the registry is asked last."""
    try:
        local = local_tasks_root()
    except PrunelabError as exc:
        return Availability(False, "", exc.problem)
    if local is not None:
        return Availability(True, f"local copy {local}")
    if _extracted(cache_dir("bigbench")):
        return Availability(True, "extracted cache")
    stem, _, version = BIGBENCH_REQUIREMENT.partition("==")
    if find_download(cache_dir("downloads"), stem, version) is not None:
        return Availability(True, "downloaded archive")
    if registry_serves_archive():
        return Availability(True, "package registry")
    return Availability(False, "", f"the package registry does not serve {BIGBENCH_REQUIREMENT}"
                        f" and {ENV_VAR} is unset")


def available() -> bool:
    """True where the BIG-bench data can be had (see `availability`)."""
    return availability().available


def require(what: str = "this") -> None:
    """Refuse in one line, naming the fix, where the BIG-bench data cannot be had."""
    found = availability()
    if not found.available:
        raise PrunelabError(f"{what} needs BIG-bench data: {found.reason}", FIX)


def task_dir(task: str) -> Path:
    """The folder of one BIG-bench task: in the local copy, or extracted on first use."""
    local = local_tasks_root()
    if local is not None:
        if not (local / task).is_dir():
            raise PrunelabError(f"the BIG-bench copy at {local} has no task named {task!r}",
                                f"check {ENV_VAR}, or see the task list in {local}")
        return local / task
    root = cache_dir("bigbench")
    final = root / task
    if final.is_dir():
        return final
    require(f"BIG-bench task {task!r}")
    with cache_lock("bigbench-extract"):
        if final.is_dir():
            return final
        wanted = {task} | {t for t in COMMON_TASKS if not (root / t).is_dir()}
        try:
            _extract(wanted, root)
        except PrunelabError as exc:  # listed, but the download failed
            raise PrunelabError(f"BIG-bench task {task!r} needs BIG-bench data, which could "
                                f"not be fetched: {exc.problem}", FIX) from None
    if not final.is_dir():
        raise PrunelabError(
            f"BIG-bench has no task named {task!r}",
            f"see the task list in the {BIGBENCH_REQUIREMENT} archive (bigbench/benchmark_tasks/)",
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
