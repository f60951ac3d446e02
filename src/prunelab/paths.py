"""Where prunelab keeps its cache, and how it writes files so that nothing is half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock


def home() -> Path:
    """The cache root: `$PRUNELAB_HOME`, or `~/.cache/prunelab`."""
    root = Path(os.environ.get("PRUNELAB_HOME") or Path.home() / ".cache" / "prunelab")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(name: str, timeout: float = 3600) -> Iterator[None]:
    """An inter-process lock so that two processes never build the same cache entry at once."""
    lock_path = cache_dir("locks") / f"{name}.lock"
    with FileLock(str(lock_path), timeout=timeout):
        yield


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it to `final` only on success.

    On any exception the temporary directory is removed, so a failed or interrupted run
    never leaves a partial output directory behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temporary file beside `final` for writing; rename it over `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should not be
    try:
        kwargs = {"encoding": encoding} if "b" not in mode else {}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: object) -> None:
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
