"""The allocator settings: huge pages asked for on request (never by importing prunelab), the
glibc threshold as the fallback scoped to pruning, both off on request, bad values refused."""

import os
import subprocess
import sys

import pytest

from prunelab import allocator
from prunelab.errors import PrunelabError


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("PRUNELAB_MMAP_THRESHOLD", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    calls = []
    monkeypatch.setattr(allocator, "_set_threshold", lambda size: calls.append(size) or True)
    monkeypatch.setattr(allocator, "torch_uses_huge_pages", lambda: False)
    return monkeypatch, calls


def test_pruning_gets_a_fixed_threshold_and_evaluation_the_usual_one(env):
    _, calls = env
    with allocator.compact_heap() as threshold:
        assert threshold == allocator.DEFAULT_MMAP_THRESHOLD
        assert calls == [allocator.DEFAULT_MMAP_THRESHOLD]
    assert calls[-1] == allocator.GLIBC_MAX_THRESHOLD


def test_with_torch_huge_pages_glibc_is_left_alone(env):
    monkeypatch, calls = env
    monkeypatch.setattr(allocator, "torch_uses_huge_pages", lambda: True)
    with allocator.compact_heap() as threshold:
        assert threshold == 0
    assert calls == []
    assert allocator.pruning_allocator().startswith("torch huge pages")


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


def test_huge_pages_are_asked_for_unless_the_user_set_the_variable(monkeypatch):
    monkeypatch.setattr(allocator, "kernel_offers_huge_pages", lambda: True)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(allocator.TORCH_HUGE_PAGES, raising=False)
    allocator.request_huge_pages()
    assert os.environ[allocator.TORCH_HUGE_PAGES] == "1"
    monkeypatch.setenv(allocator.TORCH_HUGE_PAGES, "0")
    allocator.request_huge_pages()
    assert os.environ[allocator.TORCH_HUGE_PAGES] == "0"
    monkeypatch.delenv(allocator.TORCH_HUGE_PAGES)
    monkeypatch.setattr(allocator, "kernel_offers_huge_pages", lambda: False)
    allocator.request_huge_pages()  # a kernel without them: nothing to ask for
    assert allocator.TORCH_HUGE_PAGES not in os.environ


def _fresh_process(code: str, setting: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.TORCH_HUGE_PAGES}
    if setting is not None:
        env[allocator.TORCH_HUGE_PAGES] = setting
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_prunelab_changes_no_setting_of_the_process():
    code = ("import os, sys; before = dict(os.environ); import prunelab; "
            "print(dict(os.environ) == before, 'torch' in sys.modules)")
    assert _fresh_process(code) == "True False"


def _fresh_process_uses_huge_pages(setting: str | None, *, configure: bool,
                                   torch_first: bool = False) -> bool:
    first = "import torch; torch.zeros(3); " if torch_first else ""
    opt_in = "prunelab.allocator.configure(); " if configure else ""
    code = (first + "import prunelab.allocator; " + opt_in +
            "print(prunelab.allocator.torch_uses_huge_pages())")
    return _fresh_process(code, setting) == "True"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and allocator.kernel_offers_huge_pages()),
                    reason="transparent huge pages are a Linux feature this kernel does not offer")
def test_configure_before_torch_allocates_puts_it_in_huge_page_mode():
    assert _fresh_process_uses_huge_pages(None, configure=True)
    assert not _fresh_process_uses_huge_pages(None, configure=False)  # opt-in only
    assert not _fresh_process_uses_huge_pages("0", configure=True)  # the user's setting wins
    # torch reads the setting at its first allocation: too late to ask after it
    assert not _fresh_process_uses_huge_pages(None, configure=True, torch_first=True)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not allocator.is_glibc(), reason="malloc_trim is glibc's")
def test_freed_heap_between_live_blocks_goes_back_to_the_system():
    # 64 MB in 100 kB blocks (below any mmap threshold: they live in the heap); keeping every
    # 16th alive pins the heap, as the tokenizer's leftovers do, so only trimming can return it.
    blocks = [bytearray(b"x" * 100_000) for _ in range(640)]
    pinned = blocks[::16]
    del blocks
    before = _resident_bytes()
    allocator.release_free_heap()
    assert before - _resident_bytes() > 30_000_000
    del pinned
