"""Keep the C allocator from holding freed tensor memory as resident heap (Linux, glibc).

glibc serves a large allocation with its own mmap only above a threshold, and it raises that
threshold to the size of every mmapped block that is freed (up to 32 MiB). After the first
few forward passes every activation tensor therefore lives in the main heap, where freed
blocks leave holes that long-lived tensors (weights, block inputs, statistics) pin: the heap
cannot shrink, and how much it grows depends on the order in which threads happened to free
things. Measured on smollm2-135m (SparseGPT, 1 thread, first three blocks): peak RSS
1.21–1.41 GB from one run to the next with the default, 1.27–1.29 GB with a fixed 4 MiB
threshold (each tensor of 4 MiB or more gets, and returns, its own mapping; about 5–10% more
time in page faults). Fixing the threshold also turns off glibc's dynamic adjustment.

`settle_allocator()` is called when a model is loaded. It changes a process-wide setting, so
it can be turned off: PRUNELAB_MMAP_THRESHOLD=0 leaves the allocator alone, another number
of bytes sets that threshold, and a MALLOC_MMAP_THRESHOLD_ set by the user always wins.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from prunelab.errors import PrunelabError

DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_MAX_THRESHOLD = 32 * 1024 * 1024  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
_settled: int | None = None


def mmap_threshold_from_env() -> int:
    text = os.environ.get("PRUNELAB_MMAP_THRESHOLD", "").strip()
    if not text:
        return DEFAULT_MMAP_THRESHOLD
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value > _MAX_THRESHOLD:
        raise PrunelabError(f"PRUNELAB_MMAP_THRESHOLD={text!r} is not a byte count in "
                            f"[0, {_MAX_THRESHOLD}]",
                            "unset it, set 0 to leave the allocator alone, or e.g. 4194304")
    return value


def settle_allocator() -> int:
    """Fix glibc's mmap threshold once per process; return the threshold set (0: none)."""
    global _settled
    if _settled is not None:
        return _settled
    threshold = mmap_threshold_from_env()
    _settled = 0
    if (threshold and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
            and "MALLOC_MMAP_THRESHOLD_" not in os.environ):
        try:
            if ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
                _settled = threshold
        except (AttributeError, OSError):
            pass
    return _settled
