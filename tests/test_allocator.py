"""The allocator setting: scoped to pruning, off on request, and bad values refused."""

import pytest

from prunelab import allocator
from prunelab.errors import PrunelabError


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("PRUNELAB_MMAP_THRESHOLD", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    calls = []
    monkeypatch.setattr(allocator, "_set_threshold", lambda size: calls.append(size) or True)
    return monkeypatch, calls


def test_pruning_gets_a_fixed_threshold_and_evaluation_the_usual_one(env):
    _, calls = env
    with allocator.compact_heap() as threshold:
        assert threshold == allocator.DEFAULT_MMAP_THRESHOLD
        assert calls == [allocator.DEFAULT_MMAP_THRESHOLD]
    assert calls[-1] == allocator.GLIBC_MAX_THRESHOLD


def test_zero_or_the_users_own_malloc_setting_leave_it_alone(env):
    monkeypatch, calls = env
    monkeypatch.setenv("PRUNELAB_MMAP_THRESHOLD", "0")
    with allocator.compact_heap() as threshold:
        assert threshold == 0
    monkeypatch.delenv("PRUNELAB_MMAP_THRESHOLD")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    with allocator.compact_heap() as threshold:
        assert threshold == 0
    assert calls == []


def test_the_setting_is_undone_when_pruning_fails(env):
    _, calls = env
    with pytest.raises(RuntimeError), allocator.compact_heap():
        raise RuntimeError("a method failed")
    assert calls[-1] == allocator.GLIBC_MAX_THRESHOLD


@pytest.mark.skipif(not allocator.is_glibc(), reason="mallopt is glibc's")
def test_glibc_accepts_the_setting():
    assert allocator._set_threshold(allocator.GLIBC_MAX_THRESHOLD)


@pytest.mark.parametrize("value", ["four", "-1", str(64 * 1024 * 1024)])
def test_a_bad_threshold_is_refused_with_the_fix(env, value):
    monkeypatch, _ = env
    monkeypatch.setenv("PRUNELAB_MMAP_THRESHOLD", value)
    with pytest.raises(PrunelabError, match="PRUNELAB_MMAP_THRESHOLD") as info:
        allocator.mmap_threshold_from_env()
    assert "unset it" in info.value.fix
