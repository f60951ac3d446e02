import pytest
import torch

from prunelab.data import corpora
from prunelab.errors import PrunelabError
from prunelab.testing import tiny_loaded, tiny_model, tiny_tokenizer
from prunelab.zoo import models


def test_unknown_model_name_lists_the_zoo(isolated_home):
    with pytest.raises(PrunelabError, match="unknown model 'nosuch'.*smollm2-135m"):
        models.resolve("nosuch")


def test_missing_path_and_non_model_dir(isolated_home, tmp_path):
    with pytest.raises(PrunelabError, match="does not exist"):
        models.resolve(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunelabError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"))


def test_local_directory_round_trip(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    loaded = models.load_model(tmp_path / "m")
    x = torch.tensor([[5, 6, 7]])
    assert torch.allclose(loaded.model(input_ids=x).logits, model(input_ids=x).logits)
    assert not loaded.model.training


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_loaded_weights_are_private_memory_not_the_file_mapping(tmp_path, family):
    # Pruning writes every weight: a memory-mapped model would end up in memory twice.
    model = tiny_model(family)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    loaded = models.load_model(tmp_path / "m")
    import gc
    gc.collect()
    weights = str((tmp_path / "m" / "model.safetensors").resolve())
    with open("/proc/self/maps") as maps:
        assert weights not in maps.read()
    x = torch.tensor([[5, 6, 7]])
    assert torch.equal(loaded.model(input_ids=x).logits, model(input_ids=x).logits)
    # Tied embeddings stay tied.
    head = loaded.model.get_output_embeddings()
    if getattr(loaded.model.config, "tie_word_embeddings", False):
        assert head.weight is loaded.model.get_input_embeddings().weight


def test_pickled_checkpoints_load_only_as_plain_tensors(tmp_path):
    """A .bin checkpoint that smuggles code is refused (weights_only=True)."""
    model = tiny_model("llama")
    target = tmp_path / "evil"
    model.save_pretrained(target)
    tiny_tokenizer().save_pretrained(target)
    for f in target.glob("*.safetensors"):
        f.unlink()
    state = dict(model.state_dict())
    state["payload"] = _Payload()
    torch.save(state, target / "pytorch_model.bin")
    _Payload.ran = False
    with pytest.raises(Exception):
        models.load_model(target)
    assert not _Payload.ran


def _mark_ran():
    _Payload.ran = True


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def test_calibration_windows_are_seeded_and_sized(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    loaded = tiny_loaded("llama")
    config = corpora.CalibrationConfig(source=str(text), n_samples=6, seqlen=40, seed=3)
    a = corpora.calibration_windows(loaded, config)
    b = corpora.calibration_windows(loaded, config)
    c = corpora.calibration_windows(loaded, corpora.CalibrationConfig(str(text), 6, 40, 4))
    assert a.shape == (6, 40) and torch.equal(a, b) and not torch.equal(a, c)


def test_eval_windows_are_consecutive(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcdefghij" * 30)
    loaded = tiny_loaded("llama")
    windows = corpora.eval_windows(loaded, str(text), seqlen=50, n_windows=3)
    stream = torch.tensor(loaded.encode(text.read_text()))
    assert torch.equal(windows.flatten(), stream[:150])
    with pytest.raises(PrunelabError, match="holds only 6 windows"):
        corpora.eval_windows(loaded, str(text), seqlen=50, n_windows=7)


def test_bos_is_prepended_when_the_tokenizer_adds_it(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcdefghij" * 30)
    loaded = tiny_loaded("gemma3")
    loaded.tokenizer.add_bos_token = True
    loaded.tokenizer.update_post_processor()
    assert loaded.add_bos
    windows = corpora.eval_windows(loaded, str(text), seqlen=50, n_windows=2)
    assert windows.shape == (2, 50) and (windows[:, 0] == loaded.tokenizer.bos_token_id).all()
    assert (windows[:, 1:] != loaded.tokenizer.bos_token_id).all()


def test_bad_text_inputs(tmp_path):
    loaded = tiny_loaded("llama")
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(PrunelabError, match="fewer than one window"):
        corpora.calibration_windows(loaded, corpora.CalibrationConfig(str(short), 4, 40))
    medium = tmp_path / "medium.txt"
    medium.write_text("x" * 200)
    with pytest.raises(PrunelabError, match="too little"):
        corpora.calibration_windows(loaded, corpora.CalibrationConfig(str(medium), 128, 40))
    with pytest.raises(PrunelabError, match="longer than the model's context"):
        corpora.eval_windows(loaded, str(medium), seqlen=100_000)
    with pytest.raises(PrunelabError, match="unknown text source"):
        corpora.load_text("no-such-corpus")


def _slow_convert(spec, out):
    import time

    (out / "config.json").write_text("{}")
    time.sleep(0.5)
    (out / "weights.bin").write_text("complete")
    with open(out.parent.parent / "conversions.log", "a") as log:
        log.write("converted\n")


def _convert_in_child(home):
    import os

    os.environ["PRUNELAB_HOME"] = home
    models._convert = _slow_convert
    models.ensure_converted(models.ZOO["minilm-l6"])


def test_concurrent_conversion_happens_once_and_whole(isolated_home):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_convert_in_child, args=(str(isolated_home),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    final = isolated_home / "models" / "minilm-l6"
    assert (final / "weights.bin").read_text() == "complete"
    assert (isolated_home / "conversions.log").read_text() == "converted\n"
    assert not [p for p in (isolated_home / "models").iterdir() if p.name.startswith(".")]
