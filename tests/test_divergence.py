"""Divergence from the dense model: exact on tiny vocabularies, chunking-invariant, bounded."""

import copy
import math

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.evaluate import divergence as dv
from prunelab.testing import tiny_loaded


def _direct(logits_p, logits_q):
    """The textbook formulas in float64 on full distributions."""
    p = torch.softmax(logits_p.double(), -1)
    q = torch.softmax(logits_q.double(), -1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m), kl(p, q), kl(q, p)


def test_token_divergences_match_direct_computation_on_a_tiny_vocabulary():
    torch.manual_seed(0)
    a, b = torch.randn(50, 7) * 3, torch.randn(50, 7) * 3
    out = dv.token_divergences(a, b)
    jsd, kl_pq, kl_qp = _direct(a, b)
    assert torch.allclose(out["jsd"].double(), jsd, atol=1e-6)
    assert torch.allclose(out["kl_pq"].double(), kl_pq, atol=1e-5)
    assert torch.allclose(out["kl_qp"].double(), kl_qp, atol=1e-5)
    assert torch.equal(out["agree"], (a.argmax(-1) == b.argmax(-1)).float())


def test_jsd_is_bounded_by_ln2_and_reaches_it_for_disjoint_support():
    a = torch.tensor([[60.0, -60.0, -60.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[-60.0, 60.0, -60.0], [0.0, 0.0, 0.0]])
    out = dv.token_divergences(a, b)
    assert out["jsd"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert out["jsd"][0] <= math.log(2)
    assert out["jsd"][1] == 0.0
    torch.manual_seed(1)
    many = dv.token_divergences(torch.randn(200, 11) * 20, torch.randn(200, 11) * 20)
    assert float(many["jsd"].max()) <= math.log(2) and float(many["jsd"].min()) >= 0


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt"])
def test_identical_models_diverge_by_exactly_zero(family):
    loaded = tiny_loaded(family)
    windows = torch.randint(4, 260, (3, 20))
    res = dv.windows_divergence(loaded.model, copy.deepcopy(loaded.model), windows)
    assert res.jsd == 0.0 and res.kl_dense_compressed == 0.0 and res.kl_compressed_dense == 0.0
    assert res.top1_agreement == 1.0 and res.tokens == 3 * 19
    assert res.jsd_histogram["zeros"] == res.tokens
    assert res.perplexity_dense == res.perplexity_compressed


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_pass_matches_full_logits_and_chunking_changes_nothing(family):
    dense = tiny_loaded(family, seed=0).model
    other = tiny_loaded(family, seed=1).model
    windows = torch.randint(4, 260, (3, 16))
    # Reference: the models' own forward, full vocabulary, float64 textbook formulas.
    with torch.no_grad():
        lp = dense(input_ids=windows).logits[:, :-1].reshape(-1, 260)
        lq = other(input_ids=windows).logits[:, :-1].reshape(-1, 260)
    jsd, kl_pq, kl_qp = _direct(lp, lq)
    agree = float((lp.argmax(-1) == lq.argmax(-1)).float().mean())
    t = windows[:, 1:].reshape(-1)
    nll_q = -torch.log_softmax(lq.double(), -1).gather(1, t[:, None]).mean()
    results = [dv.windows_divergence(dense, other, windows, batch_size=bs,
                                     max_logit_elements=elements)
               for bs, elements in [(3, 1 << 24), (1, 260 * 5), (2, 1)]]
    for res in results:
        assert res.jsd == pytest.approx(float(jsd.mean()), abs=1e-6)
        assert res.kl_dense_compressed == pytest.approx(float(kl_pq.mean()), abs=1e-5)
        assert res.kl_compressed_dense == pytest.approx(float(kl_qp.mean()), abs=1e-5)
        assert res.top1_agreement == pytest.approx(agree)
        assert res.perplexity_compressed == pytest.approx(math.exp(float(nll_q)), rel=1e-5)
        assert res.jsd > 0
    first = results[0]
    # Chunking and batching regroup the same sums; the row reductions' order follows the
    # slice's shape, so per-token values agree to float32 rounding (~1e-7 nats), no better.
    for res in results[1:]:
        assert res.jsd == pytest.approx(first.jsd, abs=1e-6)
        assert res.jsd_quantiles == pytest.approx(first.jsd_quantiles, abs=1e-6)
        assert sum(res.jsd_histogram["counts"]) + res.jsd_histogram["zeros"] == res.tokens


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_reusing_the_dense_hidden_states_gives_the_same_result(family):
    dense = tiny_loaded(family, seed=0).model
    other = tiny_loaded(family, seed=1).model
    windows = torch.randint(4, 260, (3, 16))
    hidden = dv.dense_hidden_states(dense, windows, batch_size=2)
    assert hidden is not None and len(hidden) == 2
    fresh = dv.windows_divergence(dense, other, windows, batch_size=2)
    reused = dv.windows_divergence(dense, other, windows, batch_size=2, dense_hidden=hidden)
    assert reused.jsd == fresh.jsd and reused.perplexity_dense == fresh.perplexity_dense
    with pytest.raises(ValueError, match="other windows"):
        dv.windows_divergence(dense, other, windows, batch_size=1, dense_hidden=hidden)


def test_different_tokenizers_or_vocabularies_are_refused():
    dense = tiny_loaded("llama")
    smaller = tiny_loaded("llama")
    smaller.model.resize_token_embeddings(200)
    with pytest.raises(PrunelabError, match="different vocabularies"):
        dv.check_compatible(dense, smaller)
    other_tok = tiny_loaded("llama")
    other_tok.tokenizer.add_tokens(["<extra>"])
    with pytest.raises(PrunelabError, match="different tokenizers"):
        dv.check_compatible(dense, other_tok)


def test_api_function_on_a_text_file(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    dense = tiny_loaded("llama")
    res = dv.divergence(dense, dense, str(text), seqlen=32, n_windows=4)
    assert res.jsd == 0.0 and res.tokens == 4 * 31


def _save(path, seed=0, vocab=260):
    from prunelab.testing import tiny_model, tiny_tokenizer

    model = tiny_model("llama", seed=seed)
    tok = tiny_tokenizer()
    if vocab != 260:
        tok.add_tokens([f"<x{i}>" for i in range(vocab - 260)])
        model.resize_token_embeddings(vocab)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cli_reports_and_writes_json_and_refuses_bad_input(tmp_path):
    import json

    from tests.cli_helpers import assert_user_error, run

    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 50)
    dense, other = _save(tmp_path / "dense"), _save(tmp_path / "other", seed=1)
    small = ["--source", str(text), "--seqlen", "32", "--windows", "2"]
    out = tmp_path / "div.json"
    result = run("divergence", str(dense), str(other), *small, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "JSD" in result.stdout and "top-1 agreement" in result.stdout
    data = json.loads(out.read_text())
    assert data["units"] == "nats" and 0 < data["jsd"] <= math.log(2) and data["tokens"] == 62
    same = run("divergence", str(dense), str(dense), *small)
    assert "JSD 0.00000" in same.stdout and "agreement 1.0000" in same.stdout
    wider = _save(tmp_path / "wider", vocab=264)
    bad_out = tmp_path / "bad.json"
    assert_user_error(run("divergence", str(dense), str(wider), *small, "--out", str(bad_out)),
                       "different vocabularies")
    assert not bad_out.exists()
    assert_user_error(run("divergence", str(dense), str(other), "--windows", "0"), "too few")


def test_masked_vocabulary_entries_contribute_nothing():
    torch.manual_seed(2)
    a, b = torch.randn(20, 9), torch.randn(20, 9)
    masked_a, masked_b = a.clone(), b.clone()
    masked_a[:, 3] = masked_b[:, 3] = float("-inf")
    out = dv.token_divergences(masked_a, masked_b)
    keep = [i for i in range(9) if i != 3]
    jsd, kl_pq, kl_qp = _direct(a[:, keep], b[:, keep])
    assert torch.allclose(out["jsd"], jsd, atol=1e-6)
    assert torch.allclose(out["kl_pq"].double(), kl_pq, atol=1e-5)
    assert torch.allclose(out["kl_qp"].double(), kl_qp, atol=1e-5)
