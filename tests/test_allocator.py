"""The allocator setting: on by default on glibc, off on request, and bad values refused."""

import platform
import sys

import pytest

from prunelab import allocator
from prunelab.errors import PrunelabError


@pytest.fixture
def fresh(monkeypatch):
    """Forget that this process already settled the allocator (the setting itself is harmless:
    the test process gets the same threshold prunelab sets anyway)."""
    monkeypatch.setattr(allocator, "_settled", None)
    monkeypatch.delenv("PRUNELAB_MMAP_THRESHOLD", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return monkeypatch


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt is glibc's")
def test_glibc_gets_a_fixed_threshold_once(fresh):
    assert allocator.settle_allocator() == allocator.DEFAULT_MMAP_THRESHOLD
    fresh.setenv("PRUNELAB_MMAP_THRESHOLD", "0")
    assert allocator.settle_allocator() == allocator.DEFAULT_MMAP_THRESHOLD  # once per process


def test_zero_or_the_users_own_malloc_setting_leave_it_alone(fresh):
    fresh.setenv("PRUNELAB_MMAP_THRESHOLD", "0")
    assert allocator.settle_allocator() == 0
    fresh.setattr(allocator, "_settled", None)
    fresh.delenv("PRUNELAB_MMAP_THRESHOLD")
    fresh.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.settle_allocator() == 0


@pytest.mark.parametrize("value", ["four", "-1", str(64 * 1024 * 1024)])
def test_a_bad_threshold_is_refused_with_the_fix(fresh, value):
    fresh.setenv("PRUNELAB_MMAP_THRESHOLD", value)
    with pytest.raises(PrunelabError, match="PRUNELAB_MMAP_THRESHOLD") as info:
        allocator.settle_allocator()
    assert "unset it" in info.value.fix
