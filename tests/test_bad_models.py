"""Damaged model directories and mistyped model names: one line, exit 2, and (where the
files alone show the damage) before any weights are read.

Each case starts from a tiny random Llama saved with save_pretrained and breaks one thing.
"""

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunelab.errors import PrunelabError
from prunelab.zoo import models

PPL = ("--windows", "2", "--seqlen", "16")


@pytest.fixture
def weights_never_read(monkeypatch):
    """Record any attempt to read a model's weights; the test asserts there was none."""
    import transformers

    from prunelab import structure

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the weights were read")

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        monkeypatch.setattr(auto, "from_pretrained", refuse)
    monkeypatch.setattr(structure, "load_pretrained", refuse)
    return calls


def copy_of(tiny_dir: Path, tmp_path: Path, name: str = "m") -> Path:
    target = tmp_path / name
    shutil.copytree(tiny_dir, target)
    return target


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def weights_file(directory: Path) -> Path:
    return directory / "model.safetensors"


def _truncate(d):
    data = weights_file(d).read_bytes()
    weights_file(d).write_bytes(data[: len(data) // 2])


def _random_bytes(d):
    size = weights_file(d).stat().st_size
    weights_file(d).write_bytes(os.urandom(size))


def _cut_in_header(d):
    weights_file(d).write_bytes(weights_file(d).read_bytes()[:40])


def _garbage_header(d):
    weights_file(d).write_bytes((16).to_bytes(8, "little") + b"\xff" * 16 + b"\0" * 64)


def _appended(d):
    with open(weights_file(d), "ab") as handle:
        handle.write(b"\0" * 100)


def _sharded(d, drop=None, misplace=False):
    from prunelab.testing import tiny_model

    weights_file(d).unlink()
    tiny_model("llama").save_pretrained(d, max_shard_size="100KB")  # tiny_dir's weights
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    if drop is not None:
        (d / shards[drop]).unlink()
    if misplace:
        name = next(iter(index["weight_map"]))
        index["weight_map"][name] = next(s for s in shards if s != index["weight_map"][name])
        index_path.write_text(json.dumps(index))


def _index_edit(d, text):
    _sharded(d)
    (d / "model.safetensors.index.json").write_text(text)


def _remote_code(d):
    edit_config(d, model_type="custom_llama",
                auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})


def _no_tokenizer(d):
    for file in d.glob("*token*"):
        file.unlink()


def _foreign_tokenizer(directory: Path) -> None:
    """A tokenizer of 300 tokens beside a model of 260 embedding rows."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as token_models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(300)}
    backend = Tokenizer(token_models.WordLevel(vocab=vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()

    for file in directory.glob("*token*"):
        file.unlink()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0").save_pretrained(directory)


# (damage, the fragment the one line must hold) -- each refused before any weights are read
BEFORE_WEIGHTS = {
    "truncated safetensors": (_truncate, "model.safetensors is truncated: its tensors need"),
    "random bytes": (_random_bytes, "model.safetensors is not a safetensors file"),
    "too short": (lambda d: weights_file(d).write_bytes(b"abc"), "holds only 3 bytes"),
    "cut inside the header": (_cut_in_header, "is truncated: its header should be"),
    "header not JSON": (_garbage_header, "its header is not a JSON object"),
    "bytes appended": (_appended, "100 bytes follow its last tensor"),
    "intermediate_size disagrees": (lambda d: edit_config(d, intermediate_size=96),
                                    "config.json does not match the weights: model.safetensors "
                                    "holds model.layers.0.mlp.gate_proj.weight as [128, 64], the "
                                    "config implies [96, 64] (6 tensors differ)"),
    "hidden_size disagrees": (lambda d: edit_config(d, hidden_size=32),
                              "config.json does not match the weights"),
    "vocab_size disagrees": (lambda d: edit_config(d, vocab_size=300),
                             "holds model.embed_tokens.weight as [260, 64], the config implies "
                             "[300, 64] (2 tensors differ)"),
    "config not JSON": (lambda d: (d / "config.json").write_text("{not json"),
                        "config.json is not valid JSON"),
    "config a list": (lambda d: (d / "config.json").write_text("[1, 2]"),
                      "config.json is not a JSON object"),
    "config not UTF-8": (lambda d: (d / "config.json").write_bytes(b'{"model_type": "\xff"}'),
                         "config.json is not UTF-8 text (byte 0xff"),
    "config size of the wrong type": (lambda d: edit_config(d, hidden_size="abc"),
                                      "config.json does not load: Validation error for field "
                                      "'hidden_size': TypeError"),
    "config without model_type": (lambda d: edit_config(d, model_type=None),
                                   "config.json has no model_type"),
    "unknown model_type": (lambda d: edit_config(d, model_type="llamazoid"),
                           "model_type 'llamazoid' is not one transformers"),
    "custom code": (_remote_code, "needs its own Python code to load (configuration_custom.py, "
                                  "modeling_custom.py"),
    "no tokenizer": (_no_tokenizer, "has no tokenizer"),
    "tokenizer of another model": (_foreign_tokenizer, "has 300 tokens but its model only 260 "
                                                       "embedding rows"),
    "no weights": (lambda d: weights_file(d).unlink(), "holds no weights"),
    "shard missing": (lambda d: _sharded(d, drop=1), "a shard its model.safetensors.index.json"),
    "tensor not in its shard": (lambda d: _sharded(d, misplace=True),
                                "which model.safetensors.index.json places there"),
    "index not JSON": (lambda d: _index_edit(d, '{"weight_map": '),
                       "model.safetensors.index.json is not readable JSON"),
    "index without weight_map": (lambda d: _index_edit(d, '{"metadata": {}}'),
                                 "has no 'weight_map'"),
    "index names a path": (lambda d: _index_edit(d, json.dumps(
        {"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}})), "not a file name"),
    "a second, damaged safetensors": (
        lambda d: (d / "extra.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"[1,2,3] "),
        "extra.safetensors is not a safetensors file"),
    "prunelab.json truncated": (lambda d: (d / "prunelab.json").write_text('{"created": "20'),
                                "prunelab.json is damaged: not valid JSON, truncated"),
    "prunelab.json a list": (lambda d: (d / "prunelab.json").write_text("[]"),
                             "prunelab.json is damaged: the whole file should be a mapping"),
    "prunelab.json without model": (lambda d: (d / "prunelab.json").write_text(
        '{"pruning": null}'), "prunelab.json is damaged: it has no 'model' entry"),
    "zoo.json a string": (lambda d: (d / "zoo.json").write_text('"smollm2"'),
                          "zoo.json is damaged"),
}


@pytest.mark.parametrize("case", list(BEFORE_WEIGHTS))
def test_damaged_directory_is_refused_before_its_weights_are_read(case, tiny_dir, tmp_path,
                                                                  weights_never_read):
    damage, fragment = BEFORE_WEIGHTS[case]
    directory = copy_of(tiny_dir, tmp_path)
    damage(directory)
    started = time.perf_counter()
    result = run("ppl", str(directory), *PPL)
    elapsed = time.perf_counter() - started
    assert_user_error(result, fragment)
    assert str(directory) in result.stderr
    assert not weights_never_read
    assert elapsed < 5  # files and headers only (a CI machine may be slow; here ~0.1 s)


def test_the_custom_code_fix_names_the_flag_and_a_missing_tokenizer_does_not(tiny_dir, tmp_path):
    custom = copy_of(tiny_dir, tmp_path, "custom")
    _remote_code(custom)
    line = run("ppl", str(custom), *PPL).stderr
    assert "pass --trust-remote-code" in line
    lacking = copy_of(tiny_dir, tmp_path, "lacking")
    _no_tokenizer(lacking)
    line = run("ppl", str(lacking), *PPL).stderr
    assert "trust" not in line and "save the tokenizer" in line
    # with the flag given, the code files it names must be there
    assert_user_error(run("ppl", str(custom), *PPL, "--trust-remote-code"),
                      "loads its model from configuration_custom.py, modeling_custom.py, which")


def _drop_tensor(directory: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights_file(directory))
    del tensors[name]
    save_file(tensors, weights_file(directory), metadata={"format": "pt"})


def _hostile_pickle(directory: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    weights_file(directory).unlink()
    torch.save({"model.embed_tokens.weight": Payload()}, directory / "pytorch_model.bin")


def _pickle_bytes(directory: Path, change) -> None:
    from safetensors.torch import load_file

    pickled = directory / "pytorch_model.bin"
    torch.save(load_file(weights_file(directory)), pickled)
    weights_file(directory).unlink()
    pickled.write_bytes(change(pickled.read_bytes()))


# refused once the loader has read the weights: the damage shows only there
AT_LOAD = {
    "a tensor missing": (lambda d: _drop_tensor(d, "model.layers.0.mlp.up_proj.weight"),
                         "lack 1 tensor(s) its config.json calls for "
                         "(model.layers.0.mlp.up_proj.weight): they would start random"),
    "config with more layers": (lambda d: edit_config(d, num_hidden_layers=3),
                                "lack 9 tensor(s) its config.json calls for"),
    "config with fewer layers": (lambda d: edit_config(d, num_hidden_layers=1),
                                 "hold 9 tensor(s) its config.json has no place for"),
    "pickle of random bytes": (lambda d: _pickle_bytes(
        d, lambda data: random.Random(0).randbytes(4096)),
                               "pytorch_model.bin is not a readable PyTorch checkpoint"),
    "pickle truncated": (lambda d: _pickle_bytes(d, lambda data: data[: len(data) // 2]),
                         "pytorch_model.bin is not a readable PyTorch checkpoint"),
    "tokenizer.json damaged": (lambda d: (d / "tokenizer.json").write_text("{"),
                               "does not load"),
}


@pytest.mark.parametrize("case", list(AT_LOAD))
def test_damage_the_loader_finds_is_one_line(case, tiny_dir, tmp_path):
    damage, fragment = AT_LOAD[case]
    directory = copy_of(tiny_dir, tmp_path)
    damage(directory)
    assert_user_error(run("ppl", str(directory), *PPL), fragment)


def test_a_hostile_pickle_never_runs_and_the_fix_is_not_to_run_it(tiny_dir, tmp_path):
    directory = copy_of(tiny_dir, tmp_path)
    marker = tmp_path / "the-pickle-ran"
    _hostile_pickle(directory, marker)
    result = run("ppl", str(directory), *PPL)
    assert_user_error(result, "pytorch_model.bin holds pickled objects other than tensors (it "
                              "names posix.system)")
    assert "weights_only" not in result.stderr
    assert not marker.exists()


def test_a_plain_pickled_state_dict_still_loads(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    directory = copy_of(tiny_dir, tmp_path)
    torch.save(load_file(weights_file(directory)), directory / "pytorch_model.bin")
    weights_file(directory).unlink()
    reference = models.load_model(tiny_dir).model
    loaded = models.load_model(directory).model
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(),
                                                 loaded.state_dict().values()))


def test_sharded_and_provenance_directories_load_as_before(tiny_dir, tmp_path):
    directory = copy_of(tiny_dir, tmp_path)
    _sharded(directory)
    (directory / "prunelab.json").write_text(json.dumps(
        {"model": {"source": "tiny", "dequantized": True}, "pruning": None}))
    loaded = models.load_model(directory)
    assert loaded.dequantized and loaded.info["prunelab"]["model"]["source"] == "tiny"
    x = torch.tensor([[5, 6, 7]])
    reference = models.load_model(tiny_dir).model
    assert torch.equal(loaded.model(input_ids=x).logits, reference(input_ids=x).logits)


# --- names that are not models (item 9) ------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """The hub is unreachable; a test that needs no probe at all asserts `probes` stays 0."""
    probes = []
    monkeypatch.setattr(models, "_hub_reachable", lambda: probes.append(1) or False)
    return probes


@pytest.mark.parametrize("argument, fragment", [
    ("out/wanda5O", "model directory out/wanda5O does not exist (out/ exists here, so this "
                    "names a directory, not a hub id) (did you mean out/wanda50?)"),
    ("out/sub/model", "model directory out/sub/model does not exist (check the path: out/ holds "
                      "no sub)"),
    ("./wanda50", "model directory ./wanda50 does not exist"),
    ("nowhere/a/b", "model directory nowhere/a/b does not exist (check the path: ./ holds no "
                    "nowhere)"),
    ("out\\wanda50", "does not exist"),
    ("~/no-such-prunelab-model", "does not exist"),
    ("out/", "is not a Hugging Face model directory (no config.json)"),
    ("smollm2-135n", "unknown model 'smollm2-135n': neither a zoo name nor a directory here "
                     "(did you mean smollm2-135m?"),
])
def test_a_path_that_does_not_exist_is_refused_at_once_without_the_network(
        argument, fragment, tmp_path, monkeypatch, no_network, weights_never_read):
    (tmp_path / "out" / "wanda50").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    assert_user_error(run("ppl", argument, *PPL), fragment)
    assert time.perf_counter() - started < 2
    assert not no_network and not weights_never_read


def test_a_hub_id_neither_cached_nor_reachable_is_refused_in_one_probe(tmp_path, monkeypatch,
                                                                       no_network):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert_user_error(run("ppl", "someorg/somemodel", *PPL),
                      "model someorg/somemodel is not a directory here (no someorg/), and as a "
                      "Hugging Face hub id it is not in the hub cache and the hub is not "
                      "reachable")
    assert len(no_network) == 1


def test_a_cached_hub_id_loads_offline(tiny_dir, tmp_path, monkeypatch, no_network):
    import huggingface_hub

    revision = "0" * 40
    snapshot = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / revision
    shutil.copytree(tiny_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    loaded = models.load_model("someorg/tiny")
    assert time.perf_counter() - started < 10  # no retries against an unreachable hub
    x = torch.tensor([[5, 6, 7]])
    assert torch.equal(loaded.model(input_ids=x).logits,
                       models.load_model(tiny_dir).model(input_ids=x).logits)


def test_a_local_directory_wins_over_a_hub_id_of_the_same_name(tiny_dir, tmp_path, monkeypatch,
                                                               no_network):
    shutil.copytree(tiny_dir, tmp_path / "someorg" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert models.resolve("someorg/tiny") == (Path("someorg/tiny"), None)
    assert not no_network


def test_resolve_keeps_its_python_contract(isolated_home, tmp_path, no_network):
    with pytest.raises(PrunelabError, match="unknown model 'nosuch'.*smollm2-135m"):
        models.resolve("nosuch")


# --- `prunelab info` on a damaged prunelab.json (item 6) -------------------------------------
@pytest.fixture(scope="module")
def pruned_record(tmp_path_factory, tiny_dir):
    """A real prunelab.json: the tiny model pruned by magnitude and saved."""
    from prunelab import api

    loaded = models.load_model(tiny_dir)
    result = api.prune(loaded, "magnitude", 0.5, progress=False)
    out = tmp_path_factory.mktemp("pruned") / "magnitude50"
    api.save(loaded, out, result)
    return json.loads((out / "prunelab.json").read_text())


def _owner(record, path: tuple[str, ...]):
    """The container holding `path`'s last step, and that step (an index in a list)."""
    owner = record
    for key in path[:-1]:
        owner = owner[int(key)] if isinstance(owner, list) else owner[key]
    return owner, int(path[-1]) if isinstance(owner, list) else path[-1]


def _without(record: dict, *path: str) -> dict:
    record = json.loads(json.dumps(record))
    owner, key = _owner(record, path)
    del owner[key]
    return record


def _setting(record: dict, value, *path: str) -> dict:
    record = json.loads(json.dumps(record))
    owner, key = _owner(record, path)
    owner[key] = value
    return record


RECORDS = {
    "truncated": (lambda r: json.dumps(r)[:50], "not valid JSON"),
    "empty": (lambda r: "", "the file is empty"),
    "a list": (lambda r: "[1, 2, 3]", "the whole file should be a mapping, found list"),
    "not UTF-8": (lambda r: b'{"model": "\xe9"}', "not UTF-8 text (byte 0xe9"),
    "no model": (lambda r: json.dumps(_without(r, "model")), "it has no 'model' entry"),
    "no pruning": (lambda r: json.dumps(_without(r, "pruning")), "it has no 'pruning' entry"),
    "model a string": (lambda r: json.dumps(_setting(r, "tiny", "model")),
                       "'model' should be a mapping, found str"),
    "storage without fp32_bytes": (lambda r: json.dumps(_without(r, "storage", "fp32_bytes")),
                                   "'storage.fp32_bytes' should be a number, found nothing"),
    "storage of size zero": (lambda r: json.dumps(_setting(r, 0, "storage", "bf16_bytes")),
                             "'storage.bf16_bytes' is 0, not a positive size"),
    "a layer without rows": (lambda r: json.dumps(_without(r, "pruning", "layers", "0", "rows")),
                             "'pruning.layers[0].rows' should be an integer"),
    "layers a mapping": (lambda r: json.dumps(_setting(r, {}, "pruning", "layers")),
                         "'pruning.layers' should be a list"),
    "model_size without before": (
        lambda r: json.dumps(_setting(r, {"after": {"parameters": 1, "bytes": 4}},
                                      "pruning", "model_size")),
        "'pruning.model_size.before' should be a mapping"),
    "weights_file_bytes a word": (lambda r: json.dumps(_setting(r, "many", "weights_file_bytes")),
                                  "'weights_file_bytes' should be an integer, found str"),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_info_on_a_damaged_record_is_one_line(case, pruned_record, tmp_path):
    make, fragment = RECORDS[case]
    content = make(pruned_record)
    (tmp_path / "prunelab.json").write_bytes(content if isinstance(content, bytes)
                                             else content.encode())
    result = run("info", str(tmp_path))
    assert_user_error(result, f"{tmp_path / 'prunelab.json'} is damaged: ")
    assert fragment in result.stderr


def test_info_on_a_whole_record_prints_it(pruned_record, tmp_path):
    (tmp_path / "prunelab.json").write_text(json.dumps(pruned_record))
    result = run("info", str(tmp_path))
    assert result.returncode == 0 and "achieved" in result.stdout and not result.stderr


def _nested_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _nested_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:2]):
            yield from _nested_paths(inner, (*prefix, str(index)))


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=5)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_info_on_any_edit_of_a_record_prints_it_or_refuses_in_one_line(data, pruned_record,
                                                                       tmp_path):
    record = json.loads(json.dumps(pruned_record))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _nested_paths(record) if p]
        if not paths or not isinstance(record, dict):
            break
        path = data.draw(st.sampled_from(paths))
        if data.draw(st.booleans()):
            record = _without(record, *path)
        else:
            record = _setting(record, data.draw(JSON_VALUES), *path)
    if data.draw(st.integers(0, 9)) == 0:
        record = data.draw(JSON_VALUES)  # sometimes not a record at all
    (tmp_path / "prunelab.json").write_text(json.dumps(record))
    result = run("info", str(tmp_path))
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2), result.stderr
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1
