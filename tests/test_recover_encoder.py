"""The encoder track on a tiny random BERT: splits, pruning, the settings' invariants, and a
head that learns a separable task."""

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.recover.encoder import encoder_transfer
from prunelab.tasks.classification import split
from prunelab.recover.loop import TrainConfig
from prunelab.tasks.base import Item
from prunelab.testing import tiny_tokenizer


def _items(n=240):
    words = ("good", "bad")
    return [Item(id=str(i), input=f"{words[i % 2]} day number {i}", choices=words,
                 gold=(i % 2,)) for i in range(n)]


def _classifier(seed=0):
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=260, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, num_labels=2,
                        pad_token_id=0)
    tokenizer = tiny_tokenizer()
    return AutoModelForSequenceClassification.from_config(config).eval(), tokenizer


def test_splits_are_disjoint_nested_and_deterministic():
    items = _items()
    full = split("toy", 160, 40, items=items)
    quarter = split("toy", 160, 40, adequacy=0.25, items=items)
    assert not {i.id for i in full.train} & {i.id for i in full.test}
    assert [i.id for i in quarter.test] == [i.id for i in full.test]
    assert [i.id for i in quarter.train] == [i.id for i in full.train[:40]]
    assert [i.id for i in split("toy", 160, 40, items=items).train] == [i.id for i in full.train]
    with pytest.raises(PrunelabError, match="fewer than"):
        split("toy", 300, 40, items=items)
    with pytest.raises(PrunelabError, match="data adequacy"):
        split("toy", 100, 40, adequacy=0, items=items)


@pytest.mark.parametrize("setting", ["dense", "sparse", "freeze"])
def test_encoder_transfer_learns_and_holds_its_invariant(setting):
    model, tokenizer = _classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = encoder_transfer("tiny-bert", "toy", setting, sparsity=0.5, n_train=160,
                              n_test=80, train=TrainConfig(lr=2e-3, epochs=3, batch_size=16,
                                                           warmup=0.1),
                              progress=False, loaded_model=(model, tokenizer), items=_items())
    assert record["accuracy"] > 0.9 and len(record["correct"]) == 80
    after = model.state_dict()
    linears = [k for k in before if k.startswith("bert.encoder.layer.") and k.endswith(
        ".weight") and before[k].dim() == 2]
    unchanged = sum(int((after[k] == before[k]).sum()) for k in linears)
    total = sum(before[k].numel() for k in linears)
    if setting == "sparse":
        assert record["masked_weights"] > 0 and record["masked_nonzero"] == 0
    if setting == "freeze":  # global magnitude's mask: kept bit for bit, nothing zeroed
        assert record["masked_nonzero"] == record["masked_weights"] > 0.4 * total
        assert record["masked_weights"] <= unchanged < total


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model or the task's data was loaded")

    monkeypatch.setattr("prunelab.recover.encoder.load_classifier", refuse)
    monkeypatch.setattr("prunelab.recover.encoder.split", refuse)


def _no_architectures(tmp_path, tiny_dir):
    """A causal LM's directory whose config.json names no architecture, only its type."""
    import json
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    config = json.loads((bare / "config.json").read_text())
    config.pop("architectures", None)
    (bare / "config.json").write_text(json.dumps(config))
    return bare


@pytest.mark.parametrize("model, named", [
    ("smollm2-135m", "LlamaForCausalLM"), ("tiny", "LlamaForCausalLM"), ("bare", "llama")])
def test_a_causal_lm_is_refused_before_it_loads(tmp_path, tiny_dir, nothing_loads, model,
                                                named):
    from tests.cli_helpers import assert_user_error, run

    where = {"tiny": str(tiny_dir), "bare": str(_no_architectures(tmp_path, tiny_dir))}
    result = run("transfer-encoder", where.get(model, model), "--setting", "dense",
                 "--out", str(tmp_path / "out.json"))
    assert_user_error(result, f"is a causal language model ({named}), not an encoder")
    assert "prunelab transfer" in result.stderr and not (tmp_path / "out.json").exists()


def test_an_encoder_directory_passes_the_check(tiny_bert):
    from prunelab.recover.encoder import check_encoder_source

    check_encoder_source(str(tiny_bert))
    check_encoder_source("minilm-l6")
