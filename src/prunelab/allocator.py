"""Keep the C allocator from holding freed tensor memory while a model is pruned (glibc).

glibc serves a large allocation with its own mmap only above a threshold, and it raises that
threshold to the size of every mmapped block that is freed (up to 32 MiB). After the first
few forward passes every activation tensor therefore lives in the main heap, where freed
blocks leave holes that long-lived tensors (block inputs, statistics, pruned weights) pin:
the heap cannot shrink, and how far it grows depends on the order in which things happened
to be freed. Measured on smollm2-135m (SparseGPT, 1 thread, first three blocks): peak RSS
1.21–1.41 GB from one identical run to the next with glibc's default, 1.30 GB every time with
a fixed 4 MiB threshold during pruning; whole runs on 2 threads: SparseGPT 1.49 -> 1.36 GB,
Wanda 1.50 -> 1.34 GB. Each tensor of 4 MiB or more gets, and returns, its own mapping, and
the page faults cost time: Wanda's time over one dense forward went 2.00 -> 2.31.

`compact_heap()` sets the threshold for the duration of a pruning run and afterwards sets
32 MiB, where glibc's own adjustment ends up after a few forward passes, so that evaluation
runs as it would have (a fixed 4 MiB made perplexity ~8% slower). It changes a process-wide
setting, so it can be turned off: PRUNELAB_MMAP_THRESHOLD=0 leaves the allocator alone,
another number of bytes is used instead of 4 MiB, and a MALLOC_MMAP_THRESHOLD_ set by the user
always wins.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Iterator

from prunelab.errors import PrunelabError

DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
GLIBC_MAX_THRESHOLD = 32 * 1024 * 1024  # where glibc's dynamic threshold stops (64-bit)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def mmap_threshold_from_env() -> int:
    """The threshold to use while pruning, in bytes; 0 means leave the allocator alone."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # the user tuned glibc: theirs wins
        return 0
    text = os.environ.get("PRUNELAB_MMAP_THRESHOLD", "").strip()
    if not text:
        return DEFAULT_MMAP_THRESHOLD
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value > GLIBC_MAX_THRESHOLD:
        raise PrunelabError(f"PRUNELAB_MMAP_THRESHOLD={text!r} is not a byte count in "
                            f"[0, {GLIBC_MAX_THRESHOLD}]",
                            "unset it, set 0 to leave the allocator alone, or e.g. 4194304")
    return value


def is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _set_threshold(size: int) -> bool:
    if not is_glibc():
        return False
    try:
        return ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, size) == 1
    except (AttributeError, OSError):
        return False


@contextlib.contextmanager
def compact_heap() -> Iterator[int]:
    """Within the block, tensors of the threshold's size or more get their own mappings.

    Yields the threshold set (0 where nothing was changed: turned off, or not glibc).
    """
    threshold = mmap_threshold_from_env()
    changed = bool(threshold) and _set_threshold(threshold)
    try:
        yield threshold if changed else 0
    finally:
        if changed:
            _set_threshold(GLIBC_MAX_THRESHOLD)
