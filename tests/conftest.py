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


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A fresh, empty PRUNELAB_HOME for tests that must not touch the real cache."""
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pytest_collection_modifyitems(config, items):
    # Integration tests share the real model's cache: run them on one worker, in order.
    for item in items:
        if item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.xdist_group("integration"))
