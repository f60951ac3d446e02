"""Streaming compression and evaluation (prunelab.streaming): the same results as in memory,
a normal sharded checkpoint, and one-line refusals that leave nothing behind."""

import json
import math

import pytest
import torch

from prunelab import compress, streaming
from prunelab.data.calibration import CalibrationConfig
from prunelab.errors import PrunelabError
from prunelab.evaluate.perplexity import perplexity
from prunelab.zoo.models import load_model

from cli_helpers import assert_user_error, run

TEXT = ("Pruning removes weights from a network; streaming reads one block at a time. " * 300)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(TEXT)
    return path


def _save_tiny(path, family="llama", **config):
    from prunelab.testing import tiny_model, tiny_tokenizer

    model = tiny_model(family)
    for key, value in config.items():
        setattr(model.config, key, value)
    if config.get("tie_word_embeddings"):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    """A tiny Llama saved in several shards (as big checkpoints are)."""
    from prunelab.testing import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("models") / "sharded"
    tiny_model("llama").save_pretrained(path, max_shard_size="60KB")
    tiny_tokenizer().save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) > 1
    return path


def _calibration(text_file):
    return CalibrationConfig(str(text_file), 4, 32, 0)


@pytest.mark.parametrize("method, options", [
    ("wanda", {"sparsity": 0.5}),
    ("sparsegpt", {"pattern": "2:4"}),
    ("gptq", {"bits": 4, "group_size": 32}),
    ("owl", {"sparsity": 0.5}),
])
def test_streamed_equals_in_memory(sharded_dir, text_file, tmp_path, method, options):
    calibration = _calibration(text_file)
    loaded = load_model(sharded_dir)
    in_memory = compress.prune(loaded, method, calibration=calibration, progress=False,
                               keep_masks=True, **options)
    out = tmp_path / "out"
    result = streaming.stream_prune(sharded_dir, out, method, calibration=calibration,
                                    progress=False, **options)
    assert [r.to_dict() for r in result.layers] == [r.to_dict() for r in in_memory.layers]
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("*.safetensors"))) == 1 + loaded.model.config.num_hidden_layers
    record = json.loads((out / "prunelab.json").read_text())
    assert record["streamed"]["dtype"] == "float32"
    assert record["pruning"]["method"] == method
    streamed = load_model(out)  # from_pretrained reads the index
    theirs = dict(streamed.model.named_parameters())
    for name, weight in loaded.model.named_parameters():
        assert torch.equal(weight, theirs[name]), name
    for layer, mask in in_memory.masks.items():
        assert torch.equal(mask, theirs[f"{layer}.weight"] == 0), layer


@pytest.mark.parametrize("method, options", [
    ("flap", {"sparsity": 0.25}),  # structured: the blocks' shapes and the config change
    ("dsnot", {"sparsity": 0.5}),
    ("besa", {"sparsity": 0.5}),
    ("rtn", {"group_size": 32}),
    ("sparsegpt", {"sparsity": 0.5, "bits": 4, "group_size": 32}),
])
def test_more_methods_stream_identically(sharded_dir, text_file, tmp_path, method, options):
    calibration = _calibration(text_file)
    loaded = load_model(sharded_dir)
    compress.prune(loaded, method, calibration=calibration, progress=False, **options)
    streaming.stream_prune(sharded_dir, tmp_path / "out", method, calibration=calibration,
                           progress=False, **options)
    ours, theirs = loaded.model.state_dict(), load_model(tmp_path / "out").model.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_tied_embeddings_stream(tmp_path, text_file):
    source = _save_tiny(tmp_path / "tied", tie_word_embeddings=True)
    loaded = load_model(source)
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    calibration = _calibration(text_file)
    compress.prune(loaded, "wanda", 0.5, calibration=calibration, progress=False)
    streaming.stream_prune(source, tmp_path / "out", "wanda", 0.5, calibration=calibration,
                           progress=False)
    streamed = load_model(tmp_path / "out")
    for (name, a), b in zip(loaded.model.state_dict().items(),
                            streamed.model.state_dict().values()):
        assert torch.equal(a, b), name
    ours = perplexity(loaded, str(text_file), 32, 6, batch_size=4)
    theirs = streaming.stream_perplexity(tmp_path / "out", str(text_file), 32, 6, batch_size=4)
    assert math.isclose(ours, theirs, rel_tol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "opt"])
def test_streamed_perplexity_equals_in_memory(tmp_path, text_file, family):
    source = _save_tiny(tmp_path / family, family)
    loaded = load_model(source)
    # 7 windows in batches of 3: a last batch of another size too
    expected = perplexity(loaded, str(text_file), 32, 7, batch_size=3)
    got = streaming.stream_perplexity(source, str(text_file), 32, 7, batch_size=3)
    assert math.isclose(got, expected, rel_tol=1e-6), (got, expected)


def test_streamed_model_holds_one_block(sharded_dir, text_file):
    """While the engine works on block i, every other block has no data (meta tensors)."""
    streamed = streaming.StreamedModel(sharded_dir)
    source = streaming.StreamedBlocks(streamed, writer=None)
    seen = []

    def loaded_blocks():
        return [i for i, b in enumerate(streamed.blocks)
                if next(b.parameters()).device.type != "meta"]

    load = source.load

    def watching_load(index):
        load(index)
        seen.append(loaded_blocks())

    source.load = watching_load
    from prunelab.data.corpora import calibration_windows
    from prunelab.engine import prune_blocks
    from prunelab.methods.base import make_method

    streamed.load_outside(head=False)
    windows = calibration_windows(streamed.loaded, _calibration(text_file))
    prune_blocks(streamed.model, make_method("wanda", {}), 0.5, None, windows, progress=False,
                 source=source)
    assert seen and all(len(now) == 1 for now in seen), seen
    assert loaded_blocks() == []


# -- bad input ------------------------------------------------------------------------------


def _no_output(out):
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def _copy(sharded_dir, tmp_path):
    """A copy of the sharded model to break."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded_dir, broken)
    return broken


def _assert_refused(broken, tmp_path, text_file, match):
    """Streamed Wanda on `broken` fails with `match` and leaves nothing behind."""
    out = tmp_path / "out"
    with pytest.raises(PrunelabError, match=match):
        streaming.stream_prune(broken, out, "wanda", 0.5, calibration=_calibration(text_file),
                               progress=False)
    assert _no_output(out)


def test_index_names_a_tensor_no_shard_holds(sharded_dir, tmp_path, text_file):
    broken = _copy(sharded_dir, tmp_path)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.1.mlp.extra.weight"] = next(iter(
        index["weight_map"].values()))
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_refused(broken, tmp_path, text_file, "lacks tensor model.layers.1.mlp.extra.weight")


def test_shards_lack_a_tensor_the_model_needs(sharded_dir, tmp_path, text_file):
    """A shard set whose tensors (and index) lack one the config calls for."""
    from safetensors.torch import load_file, save_file

    broken = _copy(sharded_dir, tmp_path)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    gone = "model.layers.1.self_attn.o_proj.weight"
    shard = broken / index["weight_map"].pop(gone)
    tensors = load_file(shard)
    del tensors[gone]
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    _assert_refused(broken, tmp_path, text_file, f"holds tensor {gone}")


def test_truncated_shard(sharded_dir, tmp_path, text_file):
    broken = _copy(sharded_dir, tmp_path)
    shard = sorted(broken.glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) - 100])
    _assert_refused(broken, tmp_path, text_file, "is truncated")


def test_disk_without_room(sharded_dir, tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(streaming, "free_disk_bytes", lambda path: 10_000)
    out = tmp_path / "out"
    with pytest.raises(PrunelabError, match="GB is free"):
        streaming.stream_prune(sharded_dir, out, "wanda", 0.5,
                               calibration=_calibration(text_file), progress=False)
    assert _no_output(out)


@pytest.mark.parametrize("method, fragment", [("gblm", "weight gradients"),
                                              ("magnitude-global", "one threshold")])
def test_method_that_cannot_stream(sharded_dir, tmp_path, text_file, method, fragment):
    out = tmp_path / "out"
    with pytest.raises(PrunelabError, match=fragment):
        streaming.stream_prune(sharded_dir, out, method, 0.5,
                               calibration=_calibration(text_file), progress=False)
    assert _no_output(out)


# -- the command ----------------------------------------------------------------------------


def test_cli_prune_stream(sharded_dir, tmp_path, text_file):
    out = tmp_path / "out"
    result = run("prune", str(sharded_dir), "--out", str(out), "--sparsity", "0.5",
                 "--calib-source", str(text_file), "--calib-samples", "4", "--seqlen", "32",
                 "--stream", "--no-ppl")
    assert result.returncode == 0, result.stderr
    assert "saved to" in result.stdout and "(streamed)" in result.stdout
    assert load_model(out).model.model.layers[0].mlp.up_proj.weight.eq(0).float().mean() == 0.5


def test_cli_quantize_stream_picks_group_size(sharded_dir, tmp_path, text_file):
    out = tmp_path / "out"
    result = run("quantize", str(sharded_dir), "--out", str(out), "--calib-source",
                 str(text_file), "--calib-samples", "4", "--seqlen", "32", "--stream",
                 "--no-ppl")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "prunelab.json").read_text())
    assert record["pruning"]["options"]["group_size"] == 64  # the tiny model's width


def test_cli_stream_refusals(sharded_dir, tmp_path, text_file, monkeypatch):
    out = tmp_path / "out"
    common = ["--out", str(out), "--calib-source", str(text_file), "--calib-samples", "4",
              "--seqlen", "32", "--stream", "--no-ppl"]
    assert_user_error(run("prune", str(sharded_dir), "--method", "gblm", "--sparsity", "0.5",
                          *common), "cannot stream")
    assert_user_error(run("quantize", str(sharded_dir), "--format", "compressed-tensors",
                          *common), "--stream writes the dequantized format")
    monkeypatch.setattr(streaming, "free_disk_bytes", lambda path: 10_000)
    assert_user_error(run("prune", str(sharded_dir), "--sparsity", "0.5", *common),
                      "GB is free")
    assert _no_output(out)


def test_cli_streams_by_itself_when_weights_exceed_memory(sharded_dir, tmp_path, text_file,
                                                          monkeypatch):
    monkeypatch.setattr(streaming, "weights_exceed_memory", lambda directory, dtype=None: True)
    out = tmp_path / "out"
    result = run("prune", str(sharded_dir), "--out", str(out), "--sparsity", "0.5",
                 "--calib-source", str(text_file), "--calib-samples", "4", "--seqlen", "32",
                 "--no-ppl")
    assert result.returncode == 0, result.stderr
    assert "streaming them block by block" in result.stderr
    assert "(streamed)" in result.stdout


# -- log-likelihood tasks -------------------------------------------------------------------


def _task_files(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"question {i} " * (1 + i % 5) + "?",
                                        "choices": ["yes", "no", "maybe so"], "answer": i % 3})
                            + "\n" for i in range(23)))
    mc = tmp_path / "mine.yaml"
    mc.write_text("name: mine\nkind: mc\ndata: d.jsonl\n")
    return mc


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_streamed_tasks_equal_in_memory(tmp_path, family):
    from prunelab.evaluate.runner import evaluate
    from prunelab.tasks.base import Item, Task
    from prunelab.tasks.registry import register

    source = _save_tiny(tmp_path / family, family)
    texts = ["the quick brown fox", "jumps over the lazy dog " * 14, "a b c d " * 3]
    rolling = register(Task(name="stream_rolling:1", family="stream_rolling", axis="none",
                            level=1, level_rank=0, kind="rolling", metric="bits_per_byte",
                            loader=lambda: [Item(id=str(i), text=t) for i, t in enumerate(texts)]))
    tasks = [str(_task_files(tmp_path)), rolling.name]
    expected = evaluate(load_model(source), tasks, batch_size=4, progress=False)
    got = streaming.stream_evaluate(source, tasks, batch_size=4, progress=False)
    assert len(got.examples) == len(expected.examples) == 26
    for ours, theirs in zip(got.examples, expected.examples):
        assert ours.example_id == theirs.example_id
        if theirs.loglik is None:  # multiple choice: its scores are the choices'
            assert ours.loglik is None
        else:
            assert ours.loglik == pytest.approx(theirs.loglik, rel=1e-5, abs=1e-5)
        assert ours.choice_scores == pytest.approx(theirs.choice_scores, rel=1e-5, abs=1e-5) \
            if theirs.choice_scores else ours.choice_scores is None
        assert ours.correct == theirs.correct


def test_streamed_generation_is_refused(tmp_path):
    from prunelab.tasks.base import Item, Task
    from prunelab.tasks.registry import register

    task = register(Task(name="stream_gen:1", family="stream_gen", axis="none", level=1,
                         level_rank=0, kind="generate", loader=lambda: [Item(id="0", input="x",
                                                                             targets=("y",))]))
    with pytest.raises(PrunelabError, match="generates text, which cannot be streamed"):
        streaming.stream_evaluate(tmp_path, [task.name])


def test_cli_ppl_and_eval_stream(sharded_dir, tmp_path, text_file):
    loaded = load_model(sharded_dir)
    expected = perplexity(loaded, str(text_file), 32, 5)
    result = run("ppl", str(sharded_dir), "--source", str(text_file), "--seqlen", "32",
                 "--windows", "5", "--stream")
    assert result.returncode == 0, result.stderr
    assert f"perplexity {expected:.3f} (streamed)" in result.stdout
    spec = _task_files(tmp_path)
    result = run("eval", str(sharded_dir), "--tasks", str(spec), "--stream", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "mine" in result.stdout


def test_cli_eval_stream_refuses_generation(sharded_dir, tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"input": "2+2=", "target": "4"}) + "\n")
    spec = tmp_path / "gen.yaml"
    spec.write_text("name: gen\nkind: generate\ndata: g.jsonl\n")
    assert_user_error(run("eval", str(sharded_dir), "--tasks", str(spec), "--stream",
                          "--no-progress"), "cannot be streamed")


@pytest.mark.integration
def test_streamed_perplexity_equals_in_memory_on_the_real_model(tmp_path):
    """smollm2-135m (tied embeddings): the streamed pass gives the in-memory perplexity."""
    from pydoc_data.topics import topics

    from prunelab.zoo.models import ZOO, ensure_converted

    text = tmp_path / "eval.txt"
    text.write_text("\n\n".join(topics[key] for key in sorted(topics)))
    directory = ensure_converted(ZOO["smollm2-135m"])
    expected = perplexity(load_model(directory), str(text), 256, 8)
    got = streaming.stream_perplexity(directory, str(text), 256, 8)
    assert math.isclose(got, expected, rel_tol=1e-6), (got, expected)


def test_disk_filled_by_someone_else_midway(sharded_dir, tmp_path, text_file, monkeypatch):
    """Room was checked at the start; another process then filled the disk: one error
    naming the problem, and no half-written output."""
    import safetensors.torch

    real, written = safetensors.torch.save_file, []

    def fills_up(tensors, filename, metadata=None):
        if len(written) == 2:
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space "
                                              "left on device (os error 28)")
        written.append(filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up)
    out = tmp_path / "out"
    with pytest.raises(PrunelabError, match="ran out of room while writing shard 3"):
        streaming.stream_prune(sharded_dir, out, "wanda", 0.5,
                               calibration=_calibration(text_file), progress=False)
    assert _no_output(out)
