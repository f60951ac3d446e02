"""State-space models (transformers' Mamba and Mamba-2, tiny random ones from configs): the
engine finds their linears and feeds them real statistics, the SSM layer kinds select them,
head/channel and state removal keep every slice consistent and reload exactly, bad input is
one line, and divergence, the study backend and transfer take them unchanged."""

import json

import pytest
import torch

import prunelab
from prunelab import arch, ssm, structure
from prunelab.engine import _collect, BlockRunner, prune_blocks
from prunelab.checks import NMPattern
from prunelab.errors import PrunelabError
from prunelab.methods.base import make_method
from prunelab.testing import tiny_loaded, tiny_model, tiny_tokenizer
from tests.cli_helpers import assert_user_error, run

SSMS = ("mamba2", "mamba")


def _windows(n=4, length=32, seed=0):
    return torch.randint(4, 260, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def test_blocks_linears_and_their_kinds_are_found():
    m2 = arch.find_blocks(tiny_model("mamba2"))
    assert m2.path == "backbone.layers"
    assert {n: arch.layer_kind(n) for n in arch.prunable_layers(m2.blocks[0])} == {
        "mixer.in_proj": "ssm_in", "mixer.out_proj": "ssm_out"}
    m1 = arch.find_blocks(tiny_model("mamba"))
    assert {n: arch.layer_kind(n) for n in arch.prunable_layers(m1.blocks[0])} == {
        "mixer.in_proj": "ssm_in", "mixer.x_proj": "ssm_dt", "mixer.dt_proj": "ssm_dt",
        "mixer.out_proj": "ssm_out"}
    # attention models keep their kinds (OPT's attention has an out_proj too)
    assert arch.layer_kind("self_attn.out_proj") == "attention"


def test_mamba_dt_proj_gets_the_statistics_of_its_real_input():
    """transformers' Mamba never calls dt_proj; its input is x_proj's first rank outputs."""
    model = tiny_model("mamba")
    windows = _windows()
    blocks = arch.find_blocks(model).blocks
    runner = BlockRunner(model, blocks, windows, 4, torch.device("cpu"))
    layers = arch.prunable_layers(blocks[0])
    stats = _collect(runner, 0, layers, ("input_sq_sum",), torch.device("cpu"))
    mixer = blocks[0].mixer
    seen = []
    handle = mixer.x_proj.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    handle.remove()
    rank = mixer.time_step_rank
    x = seen[0][..., :rank].reshape(-1, rank)
    assert stats["mixer.dt_proj"].n_tokens == x.shape[0]
    assert torch.allclose(stats["mixer.dt_proj"]["input_sq_sum"], x.pow(2).sum(0), rtol=1e-4)


@pytest.mark.parametrize("family", SSMS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_and_nm_pruning_reach_every_ssm_linear(family, method):
    model = tiny_model(family)
    records = prune_blocks(model, make_method(method), 0.5, None, _windows(), progress=False)
    assert len(records) == len(arch.named_prunable_layers(model))
    assert all(abs(r.achieved_sparsity - 0.5) < 0.02 for r in records), records
    model = tiny_model(family)
    records = prune_blocks(model, make_method(method), 0.5, NMPattern(2, 4), _windows(),
                           progress=False)
    assert all(r.achieved_sparsity == pytest.approx(0.5) for r in records)


def test_only_selects_ssm_kinds_and_leaves_the_rest_dense():
    loaded = tiny_loaded("mamba")
    before = {n: m.weight.detach().clone() for n, m in
              arch.named_prunable_layers(loaded.model).items()}
    prunelab.prune(loaded, "magnitude", 0.5, only="ssm_in,ssm_dt", progress=False)
    for name, layer in arch.named_prunable_layers(loaded.model).items():
        zeros = float((layer.weight == 0).float().mean())
        if name.endswith("out_proj"):
            assert torch.equal(layer.weight, before[name])
        else:
            assert zeros == pytest.approx(0.5, abs=0.02), name
    with pytest.raises(PrunelabError, match="cannot prune only 'ssm_mid' layers"):
        prunelab.prune(tiny_loaded("mamba"), "magnitude", 0.5, only="ssm_mid")


@pytest.mark.parametrize("family", SSMS)
@pytest.mark.parametrize("unit", ["heads", "state"])
def test_removing_units_equals_zeroing_them(family, unit):
    """Removing heads (state dims) gives the logits of the dense model whose removed heads'
    out_proj columns (Mamba: and x_proj columns; state: B and C rows) are zero, but for the
    gated norm's mean over the group, which is why Mamba-2 heads are checked with a norm per
    head."""
    model = tiny_model(family)
    parts = ssm.model_mixers(model)[0]
    if unit == "heads" and family == "mamba2":
        parts.mixer.norm.group_size = parts.head_dim  # a norm per head: zeros change nothing
    reference = tiny_model(family)
    ref_parts = ssm.model_mixers(reference)[0]
    if unit == "heads" and family == "mamba2":
        ref_parts.mixer.norm.group_size = parts.head_dim
    x = _windows()
    if unit == "heads":
        per_group = parts.heads // parts.groups
        keep = torch.cat([g * per_group + torch.tensor([0, per_group - 1])
                          for g in range(parts.groups)])
        gone = torch.tensor([h for h in range(parts.heads) if h not in keep.tolist()])
        columns = (gone[:, None] * parts.head_dim + torch.arange(parts.head_dim)).reshape(-1)
        with torch.no_grad():
            ref_parts.mixer.out_proj.weight[:, columns] = 0
            if family == "mamba":  # Mamba's channels also feed x_proj (dt, B and C)
                ref_parts.mixer.x_proj.weight[:, columns] = 0
        ssm.shrink_heads(parts, keep)
        if family == "mamba2":
            assert parts.mixer.norm.group_size == 2 * parts.head_dim  # its groups' new width
            parts.mixer.norm.group_size = parts.head_dim
    else:
        keep = torch.tensor([1, 3, 4])
        gone = torch.tensor([n for n in range(parts.state) if n not in keep.tolist()])
        with torch.no_grad():
            if family == "mamba2":
                start = 2 * parts.inner
                rows = torch.cat([start + g * parts.state + gone for g in range(2 * parts.groups)])
                ref_parts.mixer.in_proj.weight[rows] = 0
            else:
                rank = parts.mixer.time_step_rank
                ref_parts.mixer.x_proj.weight[torch.cat([rank + gone, rank + parts.state + gone])] = 0
        ssm.shrink_state(parts, keep)
    assert torch.allclose(_logits(model, x), _logits(reference, x), atol=1e-4)


@pytest.mark.parametrize("family,unit,share", [("mamba2", "heads", 0.5), ("mamba2", "heads", 0.25),
                                               ("mamba2", "state", 0.5), ("mamba", "heads", 0.5),
                                               ("mamba", "state", 0.25)])
def test_pruned_model_saves_and_reloads_with_identical_logits(tmp_path, family, unit, share):
    loaded = tiny_loaded(family)
    result = prunelab.prune(loaded, "ssm-flap", share, unit=unit,
                            calibration=prunelab.CalibrationConfig(source=_text(tmp_path),
                                                                   n_samples=4, seqlen=32),
                            progress=False)
    parts = ssm.model_mixers(loaded.model)[0]
    full = tiny_model(family)
    full_parts = ssm.model_mixers(full)[0]
    if unit == "heads":
        assert parts.heads == full_parts.heads - round(share * full_parts.heads)
    else:
        assert parts.state == full_parts.state - round(share * full_parts.state)
    prunelab.api.save(loaded, tmp_path / "out", result)
    reloaded = prunelab.load_model(tmp_path / "out")
    x = _windows()
    assert torch.equal(_logits(reloaded.model, x), _logits(loaded.model, x))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    # uniform sizes a config can hold load with plain from_pretrained; others need the loader
    plain = not (unit == "heads" and (parts.heads * parts.head_dim) % parts.hidden)
    assert (ssm.STRUCTURE_KEY not in config) == plain
    if plain:
        from transformers import AutoModelForCausalLM

        again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        assert torch.equal(_logits(again, x), _logits(loaded.model, x))


def _text(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("A state space model carries a summary of the past in its state. " * 300)
    return str(text)


def test_state_scores_follow_b_and_c_sizes():
    parts = ssm.model_mixers(tiny_model("mamba2"))[0]
    from prunelab.methods.ssm_flap import SsmFlap

    mean_sq = torch.ones(parts.mixer.in_proj.out_features)
    start = 2 * parts.inner
    mean_sq[start + 3] = 100.0  # B of state 3 in group 0
    mean_sq[start + 2 * parts.state + 5] = 0.0  # C of state 5 in group 0
    scores = SsmFlap.state_scores(parts, mean_sq)
    assert scores.argmax() == 3 and scores[5] < scores[0]


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def ssm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssm")
    for family in ("mamba2", "mamba", "llama"):
        tiny_model(family).save_pretrained(root / family)
        tiny_tokenizer().save_pretrained(root / family)
    (root / "calib.txt").write_text("Pruning a state space model keeps its state. " * 300)
    return root


@pytest.mark.parametrize("model,args,fragment", [
    ("mamba2", ["--method", "ssm-flap", "--sparsity", "0.9"], "would remove every SSM head"),
    ("mamba", ["--method", "ssm-flap", "--sparsity", "0.99", "--option", "unit=state"],
     "would remove every state dimension"),
    ("mamba2", ["--method", "flap", "--sparsity", "0.3"], "is a state-space block"),
    ("mamba2", ["--method", "wanda-sp", "--sparsity", "0.3"], "is a state-space block"),
    ("llama", ["--method", "ssm-flap", "--sparsity", "0.3"], "has no state-space mixers"),
    ("mamba2", ["--method", "ssm-flap", "--pattern", "2:4"], "does not support N:M"),
    ("mamba2", ["--method", "ssm-flap", "--sparsity", "0.3", "--option", "unit=rows"],
     "is not one of"),
])
def test_bad_ssm_input_is_one_line_and_writes_nothing(tmp_path, ssm_dirs, model, args, fragment):
    out = tmp_path / "out"
    result = run("prune", str(ssm_dirs / model), "--out", str(out), "--calib-source",
                 str(ssm_dirs / "calib.txt"), "--calib-samples", "4", "--seqlen", "32",
                 "--no-ppl", *args)
    assert_user_error(result, fragment)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_mixer_without_the_expected_layout_is_refused(tmp_path, ssm_dirs):
    model = tiny_model("mamba2")
    mixer = ssm.model_mixers(model)[0].mixer
    mixer.dt_bias = torch.nn.Parameter(torch.zeros(3))  # not one per head
    with pytest.raises(PrunelabError, match="is not laid out as transformers' mamba2: dt_bias"):
        make_method("ssm-flap").check_model(model, 0.2)


def test_a_heads_split_that_leaves_groups_unequal_is_refused():
    parts = ssm.model_mixers(tiny_model("mamba2"))[0]
    with pytest.raises(PrunelabError, match="leaves its 2 groups unequal"):
        ssm.shrink_heads(parts, torch.tensor([0, 1, 4]))
    with pytest.raises(PrunelabError, match="every SSM head"):
        ssm.shrink_heads(parts, torch.tensor([], dtype=torch.long))


def test_cli_prunes_an_ssm_saves_and_measures_it(tmp_path, ssm_dirs):
    out = tmp_path / "heads"
    result = run("prune", str(ssm_dirs / "mamba2"), "--out", str(out), "--method", "ssm-flap",
                 "--sparsity", "0.5", "--calib-source", str(ssm_dirs / "calib.txt"),
                 "--calib-samples", "4", "--seqlen", "32", "--no-ppl")
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "less" in result.stdout
    measured = run("ppl", str(out), "--source", str(ssm_dirs / "calib.txt"), "--seqlen", "32",
                   "--windows", "2")
    assert measured.returncode == 0 and "perplexity" in measured.stdout, measured.stderr


# ----------------------------------------------------------------- the rest takes SSMs as they are

def test_divergence_between_a_dense_and_a_pruned_ssm(tmp_path):
    from prunelab.evaluate.divergence import divergence

    dense, pruned = tiny_loaded("mamba2"), tiny_loaded("mamba2")
    same = divergence(dense, pruned, source=_text(tmp_path), seqlen=32, n_windows=2)
    assert same.jsd == 0.0
    prunelab.prune(pruned, "magnitude", 0.5, progress=False)
    moved = divergence(dense, pruned, source=_text(tmp_path), seqlen=32, n_windows=2)
    assert moved.jsd > 0


def test_study_backend_compresses_measures_and_restores_an_ssm(tmp_path):
    from prunelab.study.backend import PrunelabBackend, _Handle
    from prunelab.study.measures import MEASURES
    from prunelab.study.measures.divergence import Divergence
    from prunelab.study.plan import compressions
    from prunelab.study.recipe import parse_recipe

    text = _text(tmp_path)
    recipe = parse_recipe({"name": "ssm", "models": ["m"], "tasks": ["arithmetic:1"],
                           "compressions": [{"method": "ssm-flap", "sparsity": [0.5],
                                             "calibration": {"source": text, "n_samples": 4,
                                                             "seqlen": 32}}]})
    point = [p for p in compressions(recipe, lambda stage: True) if not p.is_dense][0]
    handle, backend = _Handle(tiny_loaded("mamba2")), PrunelabBackend()
    x = _windows()
    dense_logits = _logits(handle.loaded.model, x)
    record = backend.compress(handle, point)
    assert record["overall_sparsity"] > 0
    moved = backend.measure(handle, MEASURES["divergence"],
                            Divergence(source=text, seqlen=32, n_windows=2))
    assert moved["jsd"] > 0
    backend.reset(handle)
    assert torch.equal(_logits(handle.loaded.model, x), dense_logits)


def test_transfer_fine_tunes_a_sparse_ssm(tmp_path, ssm_dirs):
    text = tmp_path / "t.txt"
    text.write_text("A pruned state space model keeps its zeros while it trains. " * 1600)
    result = run("transfer", str(ssm_dirs / "mamba2"), "--out", str(tmp_path / "out"),
                 "--setting", "sparse", "--method", "magnitude", "--sparsity", "0.5",
                 "--train-on", f"text:{text}", "--max-steps", "1", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "model.safetensors")
    in_proj = weights["backbone.layers.0.mixer.in_proj.weight"]
    assert float((in_proj == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------- train-tiny

def test_train_tiny_keeps_a_model_in_the_cache_that_loads_by_name(tmp_path, monkeypatch):
    from prunelab.training import TrainRecipe, train

    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path / "home"))
    text = _text(tmp_path)
    recipe = TrainRecipe(architecture="mamba2", hidden=32, layers=1, head_dim=16, state=8,
                         steps=3, batch=2, seqlen=16, sources=[text], eval_source=text,
                         eval_windows=2)
    directory = train(recipe, "toy-ssm", progress=False, tokenizer=tiny_tokenizer())
    record = json.loads((directory / "zoo.json").read_text())
    assert record["trained_here"] and record["steps_done"] == 3
    assert record["train_tokens"] == 3 * 2 * 16 and record["recipe"]["sources"] == [text]
    assert record["train_loss"] < record["first_loss"] + 1 and record["perplexity"]["value"] > 1
    listed = run("models")
    assert listed.returncode == 0 and "toy-ssm" in listed.stdout and "trained here" in listed.stdout
    loaded = prunelab.load_model("toy-ssm")
    assert type(loaded.model).__name__ == "Mamba2ForCausalLM"
    from prunelab.study.models import is_encoder_model, model_problem

    assert model_problem("toy-ssm") is None  # a recipe may name it
    assert is_encoder_model("toy-ssm") is False
    assert "unknown model 'toy-ssm2'" in model_problem("toy-ssm2")
    with pytest.raises(PrunelabError, match="already in the cache"):
        train(recipe, "toy-ssm", progress=False, tokenizer=tiny_tokenizer())


@pytest.mark.parametrize("args,fragment", [
    (["gpt2", "--name", "x"], "cannot train a 'gpt2' model"),
    (["mamba2", "--name", "../x"], "is not a plain name"),
    (["mamba2", "--name", "x", "--steps", "0"], "steps=0 must be a positive whole number"),
    (["mamba2", "--name", "x", "--hidden", "256", "--text", "no-such-file.txt"],
     "does not exist"),
])
def test_bad_train_tiny_input_is_one_line(tmp_path, monkeypatch, args, fragment):
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path / "home"))
    assert_user_error(run("train-tiny", *args), fragment)
    assert not (tmp_path / "home" / "models").exists()


def test_ssm_flap_refuses_a_layer_selection_that_hides_its_scores(tmp_path):
    with pytest.raises(PrunelabError, match="only= left some of them out"):
        prunelab.prune(tiny_loaded("mamba2"), "ssm-flap", 0.5, only="ssm_in",
                       calibration=prunelab.CalibrationConfig(source=_text(tmp_path),
                                                              n_samples=4, seqlen=32),
                       progress=False)
