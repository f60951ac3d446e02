"""Packed checkpoints (compressed-tensors' pack-quantized) and `prunelab quantize`."""

import json

import pytest
import torch

from prunelab.testing import tiny_model, tiny_tokenizer
from tests.cli_helpers import assert_user_error, run

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("Quantization rounds weights to a grid of a few levels. " * 300)
    return path


def _quantize(tiny_dir, text_file, out, *extra):
    return run("quantize", str(tiny_dir), "--calib-source", str(text_file), "--calib-samples",
               "4", "--seqlen", "32", "--no-ppl", "--out", str(out), *extra)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("method,extra", [
    # --asymmetric: the packed format's default is symmetric, the dequantized one's is not
    ("gptq", ["--bits", "4", "--group-size", "32", "--asymmetric"]),
    ("gptq", ["--bits", "3", "--group-size", "none", "--act-order", "--asymmetric"]),
    ("rtn", ["--bits", "8", "--group-size", "64", "--symmetric"]),
])
def test_a_packed_checkpoint_loads_back_to_the_same_weights(tmp_path, tiny_dir, text_file,
                                                            method, extra):
    from prunelab.quant_export import load_compressed_tensors
    from prunelab.zoo.models import load_model

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    for out, fmt in ((plain, "dequantized"), (packed, "compressed-tensors")):
        result = _quantize(tiny_dir, text_file, out, "--method", method, "--format", fmt, *extra)
        assert result.returncode == 0, result.stderr
    config = json.loads((packed / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"
    assert config["config_groups"]["group_0"]["weights"]["num_bits"] == int(extra[1])
    expected = _weights(load_model(str(plain)).model)
    again = _weights(load_compressed_tensors(packed))
    assert expected.keys() == again.keys()
    for name, value in expected.items():
        assert torch.equal(value, again[name]), name  # bit for bit
    storage = json.loads((packed / "prunelab.json").read_text())["storage"]
    assert storage["safetensors_bytes"] < 0.6 * storage["fp32_bytes"]
    assert "size on disk" in run("info", str(packed)).stdout


def test_transformers_loads_a_symmetric_packed_checkpoint(tmp_path, tiny_dir, text_file):
    from transformers import AutoModelForCausalLM

    from prunelab.zoo.models import load_model

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    for out, fmt in ((plain, "dequantized"), (packed, "compressed-tensors")):
        assert _quantize(tiny_dir, text_file, out, "--method", "gptq", "--bits", "4",
                         "--group-size", "32", "--symmetric", "--format", fmt).returncode == 0
    model = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32)
    model(torch.tensor([[1, 5, 9]]))  # the library decompresses on the first forward
    expected = _weights(load_model(str(plain)).model)
    loaded = _weights(model)
    for name, value in expected.items():
        assert torch.equal(value, loaded[name]), name


def test_prune_with_a_quantizer_and_an_option(tmp_path, tiny_dir, text_file):
    result = run("prune", str(tiny_dir), "--method", "gptq", "--option", "bits=4",
                 "--option", "group_size=32", "--calib-source", str(text_file),
                 "--calib-samples", "4", "--seqlen", "32", "--no-ppl", "--out",
                 str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "out" / "prunelab.json").read_text())
    assert saved["pruning"]["options"]["bits"] == 4


@pytest.mark.parametrize("args,fragment", [
    (["--bits", "5"], "5 bits is not supported"),
    (["--bits", "4", "--group-size", "48"], "group size 48 does not divide"),
    (["--act-order", "--option", "static_groups=false", "--format", "compressed-tensors"],
     "cannot store"),
    (["--method", "rtn", "--act-order"], "method rtn has no option act_order"),
    (["--method", "wanda"], "method wanda does not quantize"),
    (["--format", "gguf"], "unknown checkpoint format"),
])
def test_bad_quantize_arguments_are_one_line_and_leave_nothing(tmp_path, tiny_dir, text_file,
                                                               args, fragment):
    out = tmp_path / "out"
    assert_user_error(_quantize(tiny_dir, text_file, out, *args), fragment)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_layer_type_the_packed_format_cannot_hold(tmp_path, text_file):
    gpt2 = tmp_path / "gpt2"  # GPT-2's Conv1D layers: quantizable, but not packable
    tiny_model("gpt2").save_pretrained(gpt2)
    tiny_tokenizer().save_pretrained(gpt2)
    out = tmp_path / "out"
    assert_user_error(_quantize(gpt2, text_file, out, "--format", "compressed-tensors",
                                 "--group-size", "32"), "is a Conv1D")
    assert not out.exists()
