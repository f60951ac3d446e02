"""The sparse runtime (CSR linears on CPU, 2:4 on CUDA), `prunelab speed`, and the GGUF export
(`prunelab export-gguf`): outputs equal to dense math, zeros kept, refusals in one line."""

import json
import math

import pytest
import torch
from torch import nn

from cli_helpers import assert_user_error, run
from prunelab.testing import tiny_model, tiny_tokenizer

CUDA = torch.cuda.is_available()


def _prune_in_place(model, sparsity: float, seed: int = 0) -> None:
    """Zero the smallest `sparsity` share of each block linear (magnitude, per matrix)."""
    from prunelab.arch import named_prunable_layers

    with torch.no_grad():
        for layer in named_prunable_layers(model).values():
            w = layer.weight
            k = int(w.numel() * sparsity)
            threshold = w.abs().flatten().kthvalue(k).values
            w[w.abs() <= threshold] = 0


def _two_four_in_place(model) -> None:
    from prunelab.arch import named_prunable_layers

    with torch.no_grad():
        for layer in named_prunable_layers(model).values():
            groups = layer.weight.view(layer.weight.shape[0], -1, 4)
            smallest = groups.abs().argsort(-1)[..., :2]
            groups.scatter_(-1, smallest, 0.0)


def _tokenizer_with_a_merge(path) -> None:
    """The byte tokenizer with one merge ("h e" -> "he", in place of the unused byte ÿ), as
    the GGUF vocabulary needs merges."""
    file = path / "tokenizer.json"
    data = json.loads(file.read_text())
    vocab = data["model"]["vocab"]
    vocab["he"] = vocab.pop("ÿ")
    data["model"]["merges"] = [["h", "e"]]
    file.write_text(json.dumps(data))


def _saved(tmp_path, family="llama", sparsity=0.95, record=True):
    """A pruned tiny model saved as prunelab saves one (weights, tokenizer, prunelab.json)."""
    model = tiny_model(family)
    _prune_in_place(model, sparsity)
    path = tmp_path / f"{family}-{int(sparsity * 100)}"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    _tokenizer_with_a_merge(path)
    if record:
        (path / "prunelab.json").write_text(json.dumps(
            {"model": {"source": f"tiny-{family}"}, "pruning": None, "note": "kept"}))
    return path, model


# ---- the sparse runtime ------------------------------------------------------------------

def test_csr_linear_computes_what_the_dense_linear_computes():
    from prunelab.sparse_runtime import CsrLinear

    torch.manual_seed(0)
    linear = nn.Linear(48, 24)
    with torch.no_grad():
        linear.weight[torch.rand_like(linear.weight) < 0.8] = 0
    x = torch.randn(2, 5, 48)
    torch.testing.assert_close(CsrLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


def test_only_layers_past_the_threshold_run_sparse_and_logits_match():
    from prunelab.arch import named_prunable_layers
    from prunelab.sparse_runtime import CsrLinear, to_sparse_runtime

    model = tiny_model("llama")
    _prune_in_place(model, 0.5)
    names = list(named_prunable_layers(model))
    with torch.no_grad():  # one layer much sparser than the rest
        model.get_submodule(names[0]).weight[:, 4:] = 0
    x = torch.randint(0, 260, (2, 16))
    with torch.no_grad():
        expected = model(input_ids=x).logits
    replaced = to_sparse_runtime(model, min_sparsity=0.9)
    assert list(replaced) == [names[0]] and replaced[names[0]] > 0.9
    assert isinstance(model.get_submodule(names[0]), CsrLinear)
    assert isinstance(model.get_submodule(names[1]), nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, expected, rtol=1e-4, atol=1e-4)


def test_two_four_is_recognised_exactly():
    from prunelab.sparse_runtime import is_two_four

    model = tiny_model("llama")
    _two_four_in_place(model)
    layer = model.model.layers[0].mlp.up_proj
    assert is_two_four(layer.weight)
    with torch.no_grad():
        layer.weight[0, :4] = 1.0  # one group of four with no zero
    assert not is_two_four(layer.weight)
    assert not is_two_four(torch.zeros(4, 6))  # width not a multiple of four


def test_measure_speed_runs_both_and_checks_outputs():
    from prunelab.sparse_runtime import inference_record, measure_speed

    model = tiny_model("llama")
    _prune_in_place(model, 0.95)
    result = measure_speed(model, min_sparsity=0.9, prefill_tokens=24, decode_tokens=3,
                           repeats=1)
    assert result.outputs_match and result.max_abs_logit_difference < 1e-3
    assert result.sparse_layers == 14 and result.dense_layers == 0
    assert result.prefill_tokens_per_s_dense > 0 and result.decode_tokens_per_s_sparse > 0
    record = inference_record(result, 0.9)
    assert record["speedup"] == pytest.approx(record["tokens_per_s_sparse"]
                                              / record["tokens_per_s_dense"])
    assert record["prefill"]["tokens"] == 24 and record["runtime"] == "csr"
    # the model measured stays dense: the runtime works on a copy
    from prunelab.sparse_runtime import CsrLinear
    assert not any(isinstance(m, CsrLinear) for m in model.modules())


def test_measure_speed_refuses_a_model_with_nothing_sparse_enough():
    from prunelab.errors import PrunelabError
    from prunelab.sparse_runtime import measure_speed

    model = tiny_model("llama")
    _prune_in_place(model, 0.5)
    with pytest.raises(PrunelabError, match="sparse enough"):
        measure_speed(model, min_sparsity=0.9, prefill_tokens=8, decode_tokens=1, repeats=1)


@pytest.mark.skipif(not CUDA, reason="2:4 semi-structured kernels need a CUDA GPU")
def test_semi_structured_two_four_on_the_gpu_matches_dense():
    from prunelab.sparse_runtime import SemiStructuredLinear, measure_speed, to_semi_structured

    model = tiny_model("llama").to("cuda", dtype=torch.float16)
    _two_four_in_place(model)
    x = torch.randint(0, 260, (1, 64), device="cuda")
    with torch.no_grad():
        expected = model(input_ids=x).logits.float()
    runtime = __import__("copy").deepcopy(model)
    replaced = to_semi_structured(runtime)
    assert len(replaced) == 14
    assert any(isinstance(m, SemiStructuredLinear) for m in runtime.modules())
    with torch.no_grad():
        got = runtime(input_ids=x).logits.float()
    assert (got - expected).abs().max() <= 2e-2 * expected.abs().max()
    result = measure_speed(model, prefill_tokens=64, decode_tokens=4, repeats=1)
    assert result.outputs_match and result.sparse_layers == 14


# ---- prunelab speed ----------------------------------------------------------------------

def test_speed_records_inference_in_prunelab_json(tmp_path):
    path, _ = _saved(tmp_path)
    done = run("speed", str(path), "--sparse-runtime", "--prefill-tokens", "16",
               "--decode-tokens", "2", "--repeats", "1", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "sparse layers (>= 90% zeros) 14, dense 0" in done.stdout and "(match)" in done.stdout
    data = json.loads((path / "prunelab.json").read_text())
    assert data["note"] == "kept"  # the rest of the record is untouched
    inference = data["inference"]
    assert inference["min_sparsity"] == 0.9 and inference["sparse_layers"] == 14
    assert inference["tokens_per_s_dense"] > 0 and inference["speedup"] > 0
    assert not list(path.glob(".prunelab.json.tmp-*"))
    shown = run("info", str(path))
    assert shown.returncode == 0 and "with the sparse runtime" in shown.stdout


def test_speed_without_the_runtime_measures_dense_only(tmp_path):
    path, _ = _saved(tmp_path, sparsity=0.5)
    done = run("speed", str(path), "--prefill-tokens", "8", "--decode-tokens", "1",
               "--repeats", "1", "--no-record")
    assert done.returncode == 0, done.stderr
    assert "sparse runtime" not in done.stdout
    assert "inference" not in json.loads((path / "prunelab.json").read_text())


def test_speed_refusals_are_one_line_and_write_nothing(tmp_path):
    plain, _ = _saved(tmp_path, record=False)
    assert_user_error(run("speed", str(plain)), "has no prunelab.json")
    assert_user_error(run("speed", str(tmp_path / "missing")), "has no prunelab.json")
    path, _ = _saved(tmp_path, sparsity=0.5)
    before = (path / "prunelab.json").read_bytes()
    assert_user_error(run("speed", str(path), "--sparse-runtime", "--prefill-tokens", "8",
                          "--decode-tokens", "1", "--repeats", "1"), "sparse enough")
    assert_user_error(run("speed", str(path), "--threads", "0"), "--threads 0 is below 1")
    assert_user_error(run("speed", str(path), "--prefill-tokens", "100000"),
                      "longer than the model's context")
    assert (path / "prunelab.json").read_bytes() == before


# ---- GGUF export -------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_f16_gguf_loads_back_to_the_same_model_with_zeros_exact(tmp_path, family):
    from transformers import AutoModelForCausalLM

    from prunelab.gguf_export import export_gguf

    path, _ = _saved(tmp_path, family, sparsity=0.5)
    config_file = path / "config.json"  # a rotary base other than the default travels too
    config = json.loads(config_file.read_text())
    config["rope_parameters"] = {"rope_theta": 50000.0, "rope_type": "default"}
    config_file.write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    result = export_gguf(path, "F16", tmp_path / "out.gguf")
    assert result.pruned_zeros > 0 and result.zeros_kept == result.pruned_zeros
    assert result.zeros_kept_share == 1.0
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="out.gguf",
                                                dtype=torch.float32)
    x = torch.randint(0, 260, (1, 24))
    with torch.no_grad():
        expected, got = model(input_ids=x).logits, back(input_ids=x).logits
    assert (expected - got).abs().max() < 5e-3 * expected.abs().max()
    import gguf  # a tiny random model hardly feels the rotary base: check the field itself
    fields = gguf.GGUFReader(tmp_path / "out.gguf").fields
    assert fields[f"{family}.rope.freq_base"].contents() == 50000.0
    assert fields[f"{family}.context_length"].contents() == config["max_position_embeddings"]
    # the tokenizer travels with it: the GGUF's vocabulary tokenizes as the original does
    from transformers import AutoTokenizer
    original = AutoTokenizer.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="out.gguf")
    text = "hello, the world"
    assert tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert original.convert_ids_to_tokens(original("he")["input_ids"])[-1] == "he"


@pytest.mark.parametrize("type", ["Q8_0", "Q4_0"])
def test_block_codes_keep_pruned_zeros_and_say_so(tmp_path, type):
    import gguf
    from gguf.quants import dequantize

    from prunelab.gguf_export import export_gguf

    path, model = _saved(tmp_path, sparsity=0.5)
    result = export_gguf(path, type, tmp_path / "q.gguf")
    assert result.zeros_kept == result.pruned_zeros > 0
    reader = gguf.GGUFReader(tmp_path / "q.gguf")
    tensors = {t.name: t for t in reader.tensors}
    up = tensors["blk.0.ffn_up.weight"]
    assert up.tensor_type.name == type
    restored = dequantize(up.data, up.tensor_type).reshape(model.model.layers[0].mlp.up_proj
                                                           .weight.shape)
    original = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    assert ((restored == 0) | (original != 0)).all()  # every pruned zero still zero
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size


def test_export_gguf_command_and_its_refusals(tmp_path):
    path, _ = _saved(tmp_path, sparsity=0.5)
    done = run("export-gguf", str(path), "--type", "q8_0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "llama-50.Q8_0.gguf").is_file()
    assert "pruned zeros kept exactly" in done.stdout and "(100.0000%)" in done.stdout

    gpt2 = tmp_path / "gpt2"
    tiny_model("gpt2").save_pretrained(gpt2)
    tiny_tokenizer().save_pretrained(gpt2)
    assert_user_error(run("export-gguf", str(gpt2)), "export-gguf takes Llama and Qwen2")
    assert_user_error(run("export-gguf", str(path), "--type", "Q4_K"), "unknown GGUF type")
    assert_user_error(run("export-gguf", str(path), "--out", str(tmp_path)),
                      "is a directory, not a file")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(run("export-gguf", str(path), "--out", str(blocker / "x.gguf")),
                      "which is a file")
    assert_user_error(run("export-gguf", str(tmp_path / "nothing")), "is not a directory")
    no_tokenizer = tmp_path / "no-tok"
    tiny_model("llama").save_pretrained(no_tokenizer)
    assert_user_error(run("export-gguf", str(no_tokenizer)), "has no tokenizer.json")
    tiny_tokenizer().save_pretrained(no_tokenizer)  # byte-level BPE without a single merge
    assert_user_error(run("export-gguf", str(no_tokenizer)), "has no merges")
    assert not list(tmp_path.glob("gpt2*.gguf")) and not list(tmp_path.glob(".*.tmp-*"))


def test_export_refuses_shapes_it_cannot_describe(tmp_path):
    path, _ = _saved(tmp_path, sparsity=0.5)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "intermediate_size": 100}))
    assert_user_error(run("export-gguf", str(path), "--type", "Q4_0"),
                      "are not all multiples of 32")
    # F16 takes any width, but the weights (128 wide) disagree with the config (100)
    assert_user_error(run("export-gguf", str(path), "--type", "F16"), "its config describes")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp-*"))


def test_an_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import prunelab.gguf_export as export

    path, _ = _saved(tmp_path, sparsity=0.5)
    target = tmp_path / "x.gguf"

    def broken(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("gguf.GGUFWriter.write_tensors_to_file", broken)
    with pytest.raises(KeyboardInterrupt):
        export.export_gguf(path, "F16", target)
    assert not target.exists() and not list(tmp_path.glob(".x.gguf.tmp-*"))


@pytest.mark.slow
def test_llama_cpp_reads_the_export_and_agrees_on_perplexity(tmp_path):
    """llama.cpp (llama-cpp-python) loads the F16 export of a tiny model; its perplexity on
    fixed windows is prunelab's (opt-in: the package builds llama.cpp from source)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from prunelab.gguf_export import export_gguf
    from prunelab.gguf_export import llama_cpp_perplexity

    path, model = _saved(tmp_path, sparsity=0.5)
    export_gguf(path, "F16", tmp_path / "m.gguf")
    windows = torch.randint(3, 260, (2, 32), generator=torch.Generator().manual_seed(0))
    from prunelab.evaluate.perplexity import perplexity_of_windows
    ours = perplexity_of_windows(model, windows)
    theirs = llama_cpp_perplexity(tmp_path / "m.gguf", windows)
    assert llama_cpp is not None and math.isclose(ours, theirs, rel_tol=0.01)
