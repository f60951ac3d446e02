import pytest


@pytest.fixture(autouse=True)
def _quiet_threads():
    # Two pytest workers on two cores: one thread each keeps them from fighting.
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama and the byte tokenizer saved as a model directory."""
    from prunelab.testing import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _classification_items(n=700):
    from prunelab.tasks.base import Item

    words = ("good", "bad")
    return [Item(id=str(i), input=f"{words[i % 2]} day number {i}", choices=words,
                 gold=(i % 2,)) for i in range(n)]


@pytest.fixture
def synthetic(monkeypatch):
    """A classification task "synth" (700 items: 500 held out, a pool of 200) as two
    finetune levels, 100% and 50% of the pool (the encoder track's tests)."""
    from prunelab.tasks import classification
    from prunelab.tasks.base import Task
    from prunelab.tasks.registry import register

    real = classification.classification_items
    monkeypatch.setattr(classification, "classification_items",
                        lambda task: _classification_items() if task == "synth" else real(task))
    for rank, percent in enumerate((100, 50)):
        register(Task(name=f"finetune-synth:{percent}", family="finetune-synth",
                      axis="adequacy", level=percent, level_rank=rank, kind="finetune",
                      loader=lambda: classification.finetune_split("synth").test,
                      paired_levels=True))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT encoder and the byte tokenizer saved as a model directory."""
    import torch
    from transformers import BertConfig, BertModel

    from prunelab.testing import tiny_tokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    config = BertConfig(vocab_size=260, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, pad_token_id=0)
    BertModel(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A fresh, empty PRUNELAB_HOME for tests that must not touch the real cache."""
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pytest_collection_modifyitems(config, items):
    import os

    run_slow = os.environ.get("PRUNELAB_SLOW_TESTS") == "1"
    for item in items:
        # Integration tests share the real model's cache: run them on one worker, in order.
        if item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.xdist_group("integration"))
    # Tests of BIG-bench data skip, with the reason, where the data cannot be had (the
    # registry no longer serves it; PRUNELAB_BIGBENCH names a local copy). Asked once.
    marked = [item for item in items if item.get_closest_marker("needs_bigbench")]
    if marked:
        from prunelab.data.bigbench import availability

        found = availability()
        if not found.available:
            skip = pytest.mark.skip(reason=f"BIG-bench data not available: {found.reason}")
            for item in marked:
                item.add_marker(skip)
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="opt-in: set PRUNELAB_SLOW_TESTS=1"))
