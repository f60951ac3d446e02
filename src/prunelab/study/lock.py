"""One study at a time in a run directory.

`run_study` holds an OS file lock on `RUN_DIR/study.lock` while it claims the directory and
computes its points, so a second process on the same directory is refused at once instead of
computing every point again. The lock is the kernel's (flock), so it dies with its process:
a study killed with `kill -9` leaves the file behind but not the lock, and the next run takes
it without waiting. The holder's pid is written beside it (`study.pid`) only to name it in
the refusal; it is never trusted to decide anything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from prunelab.errors import PrunelabError

LOCK_FILE = "study.lock"
PID_FILE = "study.pid"
# Files of the lock itself: a directory holding only these is still an empty one.
LOCK_FILES = (LOCK_FILE, PID_FILE)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process, or refuse in one line if another study holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise PrunelabError(f"run directory {run_dir} is in use by another study "
                            f"({_holder(run_dir)})",
                            "wait for it or use another --run-dir") from None
    try:
        (run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            (run_dir / PID_FILE).unlink()
        lock.release()


def _holder(run_dir: Path) -> str:
    try:
        return f"pid {int((run_dir / PID_FILE).read_text().strip())}"
    except (OSError, ValueError):
        return "pid unknown"
