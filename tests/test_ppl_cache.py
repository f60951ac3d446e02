"""The dense model's perplexity is measured once per (weights, windows) and then remembered."""

import json

import pytest
import torch

from prunelab import api, ppl_cache
from prunelab.evaluate import perplexity as measuring
from prunelab.testing import tiny_loaded, tiny_model, tiny_tokenizer
from prunelab.zoo.models import load_model


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("Perplexity measures how surprised a model is by a text. " * 40)
    return str(path)


@pytest.fixture
def forward_passes(monkeypatch):
    """Counts the perplexity forward passes that really run."""
    calls = []
    real = measuring.perplexity_of_windows

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(measuring, "perplexity_of_windows", counting)
    return calls


def test_second_call_comes_from_the_cache(isolated_home, model_dir, text, forward_passes):
    loaded = load_model(model_dir)
    first = api.dense_perplexity(loaded, text, 32, 2)
    second = api.dense_perplexity(load_model(model_dir), text, 32, 2)
    assert not first.cached and second.cached
    assert second.value == first.value == api.perplexity(loaded, text, 32, 2)
    assert len(forward_passes) == 2  # the dense measurement, then the uncached api.perplexity
    entries = list((isolated_home / "perplexity").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["perplexity"] == first.value


def test_batch_size_does_not_matter(isolated_home, model_dir, text, forward_passes):
    loaded = load_model(model_dir)
    api.dense_perplexity(loaded, text, 32, 2, batch_size=1)
    assert api.dense_perplexity(loaded, text, 32, 2, batch_size=2).cached
    assert len(forward_passes) == 1


def test_different_windows_miss(isolated_home, model_dir, text, tmp_path, forward_passes):
    loaded = load_model(model_dir)
    api.dense_perplexity(loaded, text, 32, 2)
    # the same 64 tokens cut differently must not share an entry
    assert not api.dense_perplexity(loaded, text, 16, 4).cached
    assert not api.dense_perplexity(loaded, text, 32, 3).cached
    other = tmp_path / "other.txt"
    other.write_text("A different text gives different windows altogether. " * 40)
    assert not api.dense_perplexity(loaded, str(other), 32, 2).cached
    assert len(forward_passes) == 4


def test_changed_weights_miss(isolated_home, model_dir, text, forward_passes):
    first = api.dense_perplexity(load_model(model_dir), text, 32, 2)
    changed = tiny_model("llama")
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(3)
    changed.save_pretrained(model_dir)  # same file size, new bytes
    again = api.dense_perplexity(load_model(model_dir), text, 32, 2)
    assert not again.cached and again.value != first.value
    assert len(forward_passes) == 2


def test_weights_digest_follows_the_bytes_not_the_file_times(model_dir, isolated_home):
    import os

    before = ppl_cache.weights_digest(model_dir)
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert ppl_cache.weights_digest(model_dir) == before
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size and mtime
    assert ppl_cache.weights_digest(model_dir) != before


def test_corrupted_cache_files_are_recomputed(isolated_home, model_dir, text, forward_passes):
    loaded = load_model(model_dir)
    first = api.dense_perplexity(loaded, text, 32, 2)
    for folder in ("perplexity", "digests"):
        for entry in (isolated_home / folder).glob("*.json"):
            entry.write_text("{not json")
    again = api.dense_perplexity(loaded, text, 32, 2)
    assert not again.cached and again.value == first.value
    assert api.dense_perplexity(loaded, text, 32, 2).cached  # and rewritten whole
    for wrong in ('{"perplexity": "high"}', '[1, 2]', '{"perplexity": -1}', ""):
        for entry in (isolated_home / "perplexity").glob("*.json"):
            entry.write_text(wrong)
        assert not api.dense_perplexity(loaded, text, 32, 2).cached
    assert len(forward_passes) == 6


def test_a_model_built_in_memory_is_not_cached(isolated_home, text, forward_passes):
    loaded = tiny_loaded()
    assert not api.dense_perplexity(loaded, text, 32, 2).cached
    assert not api.dense_perplexity(loaded, text, 32, 2).cached
    assert len(forward_passes) == 2
    assert not list((isolated_home / "perplexity").glob("*.json"))
