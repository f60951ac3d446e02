"""Pruning one kind of layer only (`only=attention|mlp`), an option of every method."""

import pytest
import torch

from prunelab import api, arch
from prunelab.errors import PrunelabError
from prunelab.testing import tiny_loaded


@pytest.mark.parametrize("family,attention,mlp", [
    ("llama", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
     {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    ("gpt2", {"attn.c_attn", "attn.c_proj"}, {"mlp.c_fc", "mlp.c_proj"}),
    ("opt", {"self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"},
     {"fc1", "fc2"}),
])
def test_layer_kinds_per_architecture(family, attention, mlp):
    block = arch.find_blocks(tiny_loaded(family).model).blocks[0]
    with arch.only_layers("attention"):
        assert set(arch.prunable_layers(block)) == attention
    with arch.only_layers("mlp"):
        assert set(arch.prunable_layers(block)) == mlp
    assert set(arch.prunable_layers(block)) == attention | mlp  # outside: all again


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_only_attention_prunes_attention_exactly_and_leaves_the_rest(method, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 60)
    loaded = tiny_loaded("llama")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    from prunelab.data.corpora import CalibrationConfig

    result = api.prune(loaded, method, 0.25, calibration=CalibrationConfig(str(text), 4, 32),
                       progress=False, only="attention")
    assert result.options["only"] == "attention"
    names = {r.name for r in result.layers}
    assert names and all("self_attn" in n for n in names)
    for name, p in loaded.model.named_parameters():
        if "self_attn" in name and name.endswith("weight"):
            zeros = int((p == 0).sum())
            assert zeros == p.numel() // 4, name  # a quarter of every row, exactly
        else:
            assert torch.equal(p, before[name]), name


def test_bad_kind_is_refused_before_any_work():
    with pytest.raises(PrunelabError, match="cannot prune only 'heads' layers"):
        api.check_prune_args("wanda", 0.5, options={"only": "heads"})
    loaded = tiny_loaded("llama")
    with pytest.raises(PrunelabError, match="cannot prune only"):
        api.prune(loaded, "magnitude", 0.5, only="heads", progress=False)


def test_cli_and_study_stage_accept_the_option(tmp_path):
    from tests.cli_helpers import assert_user_error, run
    from prunelab.study.stages import parse_stage
    from prunelab.testing import tiny_model, tiny_tokenizer

    model = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    ok = run("prune", str(model), "--out", str(tmp_path / "out"), "--method", "magnitude",
             "--sparsity", "0.5", "--option", "only=attention", "--no-ppl")
    assert ok.returncode == 0, ok.stderr
    assert_user_error(run("prune", str(model), "--out", str(tmp_path / "bad"), "--method",
                           "magnitude", "--sparsity", "0.5", "--option", "only=heads",
                           "--no-ppl"), "cannot prune only")
    stage = parse_stage({"method": "wanda", "sparsity": 0.2, "options": {"only": "attention"}})
    assert stage.needs_calibration() and stage.problems(None) == []
    assert "only=attention" in stage.label()
    assert "only=attention" in run("methods").stdout
