"""`prunelab quantize` works with its defaults on any model (issue 27, items 14 and 16).

Without --group-size it takes the largest of 128, 64, 32 dividing every quantized layer's
input width (smollm2's 576 takes 64), and says so; per channel when none divides. A group size
given explicitly is used as given, and refused (naming the flag) when it does not divide.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from cli_helpers import assert_user_error, run
from prunelab.methods.quant import group_size_line, largest_group_size
from prunelab.methods.rtn import fitting_group_size
from prunelab.testing import TINY_CONFIGS, tiny_model, tiny_tokenizer


def _tiny_of_width(hidden: int, intermediate: int):
    spec = dict(TINY_CONFIGS["llama"])
    model_type = spec.pop("model_type")
    spec.update(hidden_size=hidden, intermediate_size=intermediate)
    config = AutoConfig.for_model(model_type, vocab_size=260, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=0, **spec)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def width_96(tmp_path_factory):
    """Widths 96 and 160, like smollm2's 576 and 1536 in kind: 128 divides neither, 32 both."""
    path = tmp_path_factory.mktemp("models") / "width96"
    _tiny_of_width(96, 160).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_the_largest_listed_size_dividing_every_width():
    assert largest_group_size([576, 1536]) == 64  # smollm2-135m
    assert largest_group_size([96, 160]) == 32
    assert largest_group_size([64, 128]) == 64
    assert largest_group_size([80, 160]) is None
    assert largest_group_size([1024, 4096]) == 128


def test_the_size_is_read_from_the_model():
    assert fitting_group_size(tiny_model("llama")) == 64
    assert fitting_group_size(_tiny_of_width(96, 160)) == 32
    assert fitting_group_size(_tiny_of_width(80, 160)) is None


def test_the_line_says_what_was_chosen():
    assert group_size_line(64) == ("group size 64: the largest of 128, 64, 32 dividing every "
                                   "layer width")
    assert "one grid per output channel" in group_size_line(None)


def _weights(directory) -> dict:
    return load_file(str(directory / "model.safetensors"))


def test_quantize_with_the_defaults_takes_a_fitting_size_and_says_so(width_96, tmp_path):
    default = run("quantize", str(width_96), "--method", "rtn", "--no-ppl",
                  "--out", str(tmp_path / "default"))
    assert default.returncode == 0, default.stderr
    assert ("group size 32: the largest of 128, 64, 32 dividing every layer width"
            in default.stdout)
    assert "rtn 4-bit g32" in default.stdout
    assert "quantizing (rtn)" in default.stderr and "pruning (" not in default.stderr
    saved = json.loads((tmp_path / "default" / "prunelab.json").read_text())
    assert saved["pruning"]["options"]["group_size"] == 32

    # the same as asking for 32: the chosen size changes nothing else
    explicit = run("quantize", str(width_96), "--method", "rtn", "--no-ppl",
                   "--group-size", "32", "--out", str(tmp_path / "explicit"))
    assert explicit.returncode == 0, explicit.stderr
    assert "group size 32: the largest" not in explicit.stdout
    a, b = _weights(tmp_path / "default"), _weights(tmp_path / "explicit")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_per_channel_when_no_listed_size_divides(tmp_path):
    model = tmp_path / "width80"
    _tiny_of_width(80, 160).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    result = run("quantize", str(model), "--method", "rtn", "--no-ppl",
                 "--out", str(tmp_path / "q"))
    assert result.returncode == 0, result.stderr
    assert "group size none: none of 128, 64, 32 divides every layer width" in result.stdout
    assert "rtn 4-bit per channel" in result.stdout
    saved = json.loads((tmp_path / "q" / "prunelab.json").read_text())
    assert saved["pruning"]["options"]["group_size"] is None


def test_an_explicit_size_that_does_not_divide_is_refused_naming_the_flag(width_96, tmp_path):
    result = run("quantize", str(width_96), "--method", "rtn", "--no-ppl", "--group-size", "64",
                 "--out", str(tmp_path / "q"))
    assert_user_error(result, "group size 64 does not divide the input width 96")
    assert "--group-size 32" in result.stderr and "--group-size none" in result.stderr
    assert "(pass --group-size 32 " in result.stderr  # the flag first, then the inner name
    assert not (tmp_path / "q").exists()


def test_info_on_a_quantized_model_shows_bits_and_group_not_sparsity(width_96, tmp_path):
    out = tmp_path / "q"
    assert run("quantize", str(width_96), "--method", "rtn", "--no-ppl",
               "--out", str(out)).returncode == 0
    shown = run("info", str(out))
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if line.startswith("layer "))
    assert header.split()[:4] == ["layer", "shape", "bits", "group"]
    assert "target" not in header and "achieved" not in header
    assert "quantized, not pruned" in shown.stdout


def test_info_on_a_pruned_model_keeps_its_sparsity_columns(tiny_dir, tmp_path):
    out = tmp_path / "p"
    assert run("prune", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.5", "--no-ppl",
               "--out", str(out)).returncode == 0
    shown = run("info", str(out))
    header = next(line for line in shown.stdout.splitlines() if line.startswith("layer "))
    assert "target" in header and "achieved" in header
    assert "quantized, not pruned" not in shown.stdout
