"""Packed checkpoints load where users load models: every bit width, group size and per-channel
grid `--format compressed-tensors` holds, written by prunelab and read back by plain
transformers `AutoModelForCausalLM.from_pretrained`, gives the logits of the dequantized model
it was written from. The versions this is known to work with are in pyproject.toml."""

import json

import pytest
import torch

from prunelab.checks import SUPPORTED_BITS
from tests.cli_helpers import run

pytest.importorskip("compressed_tensors")

GROUPS = (32, 64, 128, None)  # None: one grid per output channel
IDS = torch.tensor([[1, 17, 99, 4, 250, 63, 8, 41, 200, 5, 77, 130]])


def _wide_loaded():
    """A tiny random Llama whose every input width (128 and 256) every group size divides."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunelab.testing import tiny_tokenizer
    from prunelab.zoo.models import LoadedModel

    config = AutoConfig.for_model("llama", hidden_size=128, intermediate_size=256,
                                  num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=260, bos_token_id=1,
                                  eos_token_id=2, pad_token_id=0, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="tiny-wide-llama",
                       path=None, info={"tiny": True})


def _write(tmp_path, bits, group_size, symmetric):
    from prunelab.api import quantize, save

    loaded = _wide_loaded()
    result = quantize(loaded, method="rtn", bits=bits, group_size=group_size,
                      symmetric=symmetric, progress=False)
    out = tmp_path / "packed"
    save(loaded, out, result, format="compressed-tensors")
    return loaded.model, out


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g}" if g else "channel")
@pytest.mark.parametrize("bits", SUPPORTED_BITS, ids=lambda b: f"{b}bit")
def test_transformers_loads_every_symmetric_packed_grid(tmp_path, bits, group_size):
    from transformers import AutoModelForCausalLM

    dequantized, packed = _write(tmp_path, bits, group_size, symmetric=True)
    weights = json.loads((packed / "config.json").read_text())["quantization_config"][
        "config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["symmetric"]) == (bits, True)
    assert weights["strategy"] == ("group" if group_size else "channel")
    loaded = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(loaded), _logits(dequantized), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_size", (64, None), ids=("g64", "channel"))
def test_an_asymmetric_packed_grid_reads_back_with_prunelab(tmp_path, group_size):
    """What the note `quantize --asymmetric --format compressed-tensors` prints says: prunelab's
    loader reads it; transformers' from_pretrained, if it reads it at all, must not read it
    wrong (with the versions tested it stops with a size mismatch)."""
    from transformers import AutoModelForCausalLM

    from prunelab.quant_export import load_compressed_tensors

    dequantized, packed = _write(tmp_path, 4, group_size, symmetric=False)
    torch.testing.assert_close(_logits(load_compressed_tensors(packed)), _logits(dequantized),
                               rtol=1e-5, atol=1e-5)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32).eval()
    except RuntimeError as exc:
        assert "size mismatch" in str(exc) or "mismatched" in str(exc), exc
    else:
        torch.testing.assert_close(_logits(loaded), _logits(dequantized), rtol=1e-5,
                                   atol=1e-5)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("Quantization rounds weights to a grid of a few levels. " * 300)
    return path


@pytest.mark.parametrize("flag, symmetric", [((), True), (("--asymmetric",), False),
                                             (("--symmetric",), True)])
def test_the_packed_format_is_symmetric_unless_asked(tmp_path, tiny_dir, text_file, flag,
                                                     symmetric):
    out = tmp_path / "out"
    result = run("quantize", str(tiny_dir), "--method", "rtn", "--bits", "4", "--group-size",
                 "32", "--format", "compressed-tensors", "--no-ppl", "--calib-source",
                 str(text_file), "--out", str(out), *flag)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["group_0"]["weights"]["symmetric"] is symmetric
    assert ("not by transformers' from_pretrained" in result.stdout) is (not symmetric)


def test_the_dequantized_format_stays_asymmetric_by_default(tmp_path, tiny_dir, text_file):
    out = tmp_path / "out"
    result = run("quantize", str(tiny_dir), "--method", "rtn", "--bits", "4", "--group-size",
                 "32", "--no-ppl", "--calib-source", str(text_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    options = json.loads((out / "prunelab.json").read_text())["pruning"]["options"]
    assert options["symmetric"] is False


def test_a_loader_can_refuse_an_asymmetric_packed_checkpoint_in_one_line(tmp_path, tiny_dir):
    from prunelab.errors import PrunelabError
    from prunelab.quant_export import check_packed_loads

    _, symmetric = _write(tmp_path / "s", 4, 64, symmetric=True)
    check_packed_loads(symmetric)
    check_packed_loads(tiny_dir)  # not packed at all
    _, asymmetric = _write(tmp_path / "a", 4, 64, symmetric=False)
    with pytest.raises(PrunelabError, match="asymmetric packed checkpoint"):
        check_packed_loads(asymmetric)
