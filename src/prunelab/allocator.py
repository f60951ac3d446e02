"""Keep freed tensor memory from inflating the process while a model is pruned (Linux, glibc).

glibc serves a large allocation with its own mmap only above a threshold, and it raises that
threshold to the size of every mmapped block that is freed (up to 32 MiB). After the first
few forward passes every activation tensor therefore lives in the main heap, where freed
blocks leave holes that long-lived tensors (block inputs, statistics) pin: the heap cannot
shrink, and how far it grows depends on the order in which things happened to be freed, so
the peak differs from one identical run to the next (the docs' findings, "Benchmarks: the allocator", have the figures).

Two remedies, the first preferred:

1. torch's own huge-page mode (THP_MEM_ALLOC_ENABLE=1): every CPU tensor of 2 MiB or more is
   allocated page-aligned (posix_memalign) and madvised for transparent huge pages; why that
   also keeps the heap from growing is observed, not yet explained. `configure()` sets the
   variable (a value you set yourself wins, 0 turns it off); importing prunelab does not, as
   a library should leave the process's settings alone. c10 reads it once, at torch's first
   CPU allocation, so it takes effect only if called before any tensor exists: the
   `prunelab` command calls it first thing; a script that prunes big models calls
   `prunelab.allocator.configure()` before importing torch, or exports the variable itself.
   It gave the lowest and steadiest peak at no cost in time.
2. Where huge pages are not in effect, `compact_heap()` fixes glibc's mmap threshold at 4 MiB
   for the duration of a pruning run: each tensor of 4 MiB or more gets, and returns, its own
   mapping, which steadies the peak but costs page faults. Afterwards it sets 32 MiB, where
   glibc's own adjustment ends up, so that evaluation runs as it would have (a fixed 4 MiB
   slows perplexity). PRUNELAB_MMAP_THRESHOLD=0 leaves the allocator alone, another number
   of bytes is used instead of 4 MiB, and a MALLOC_MMAP_THRESHOLD_ set by the user always wins.

Besides, `release_free_heap()` hands back (malloc_trim) what tokenizing the calibration text
left freed in the heap, before the block loop starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

from prunelab.errors import PrunelabError

TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"  # read by torch's CPU allocator (c10)
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
GLIBC_MAX_THRESHOLD = 32 * 1024 * 1024  # where glibc's dynamic threshold stops (64-bit)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def kernel_offers_huge_pages() -> bool:
    """Transparent huge pages available to a process that asks (`always` or `madvise`)."""
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:  # not Linux, or a kernel built without them
        return False


def request_huge_pages() -> None:
    """Ask torch's CPU allocator for huge pages, unless the user has set the variable.

    To be called before torch allocates anything (see the module's doc). Child processes
    inherit the variable, as they would if the user had set it.
    """
    if sys.platform.startswith("linux") and kernel_offers_huge_pages():
        os.environ.setdefault(TORCH_HUGE_PAGES, "1")


def configure() -> None:
    """Opt in to the allocator settings that keep a big model's pruning peak low and steady.

    Sets what must be set before torch's first allocation (huge pages); the glibc threshold
    needs nothing here, `compact_heap()` applies it around each pruning run. Changes the
    whole process, so the `prunelab` command calls it, and a library import never does.
    """
    request_huge_pages()


def torch_uses_huge_pages() -> bool:
    """Whether torch's CPU allocator is in huge-page mode in this process.

    In that mode every allocation of 2 MiB or more starts on a page boundary. Without it torch
    asks glibc for 64-byte alignment, which puts a mapping's data 64 bytes past the page and a
    heap block on a page boundary one time in 64: three probes all aligned is chance 1 in 2**18.
    """
    import torch

    probes = [torch.empty(2 * 1024 * 1024, dtype=torch.uint8) for _ in range(3)]
    return all(p.data_ptr() % 4096 == 0 for p in probes)


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


def _glibc(function: str, *args: int) -> int | None:
    """Call one of glibc's allocator functions; None where there is no such function."""
    if not is_glibc():
        return None
    try:
        return getattr(ctypes.CDLL(None), function)(*args)
    except (AttributeError, OSError):
        return None


def _set_threshold(size: int) -> bool:
    return _glibc("mallopt", _M_MMAP_THRESHOLD, size) == 1


def release_free_heap() -> None:
    """Give the free memory inside glibc's heaps back to the system (malloc_trim).

    Tokenizing the calibration corpus as one string leaves freed heap behind, which would
    otherwise stay mapped through the whole block loop; trimming it is cheap.
    """
    _glibc("malloc_trim", 0)


def pruning_allocator() -> str:
    """In words, what `compact_heap()` does in this process (for benchmarks and reports)."""
    if torch_uses_huge_pages():
        return f"torch huge pages ({TORCH_HUGE_PAGES}=1)"
    threshold = mmap_threshold_from_env() if is_glibc() else 0
    return f"glibc mmap threshold {threshold} bytes" if threshold else "allocator left alone"


@contextlib.contextmanager
def compact_heap() -> Iterator[int]:
    """Within the block, tensors of the threshold's size or more get their own mappings,
    unless torch's huge-page mode is on (the better remedy, see the module docstring).

    Yields the threshold set (0 where nothing was changed: huge pages, turned off, not glibc).
    """
    threshold = mmap_threshold_from_env()  # a bad value is refused even when not needed
    changed = bool(threshold) and not torch_uses_huge_pages() and _set_threshold(threshold)
    try:
        yield threshold if changed else 0
    finally:
        if changed:
            _set_threshold(GLIBC_MAX_THRESHOLD)
