"""Structured pruning: surgery equals zeroing, saved directories reload exactly, and FLAP,
Wanda-sp and magnitude-sp follow their rules (transcribed here from the FLAP paper's code)."""

import json
import math

import pytest
import torch

import prunelab
from prunelab import arch, structure
from prunelab.api import save
from prunelab.engine import prune_blocks
from prunelab.errors import PrunelabError
from prunelab.methods.base import make_method
from prunelab.testing import tiny_loaded, tiny_model, tiny_tokenizer


def _windows(n=6, length=24, seed=0):
    return torch.randint(4, 260, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def _dense_inputs(model, windows, names=("self_attn.o_proj", "mlp.down_proj")):
    """Per block, the inputs of o_proj and down_proj over full passes of the dense model."""
    blocks = arch.find_blocks(model).blocks
    seen = {(b, n): [] for b in range(len(blocks)) for n in names}
    handles = [blocks[b].get_submodule(n).register_forward_hook(
        lambda m, a, o, key=(b, n): seen[key].append(a[0].reshape(-1, a[0].shape[-1])))
        for b, n in seen]
    with torch.no_grad():
        for row in windows:
            model(input_ids=row[None], use_cache=False)
    for h in handles:
        h.remove()
    return {key: torch.cat(xs) for key, xs in seen.items()}


# (family, gqa, query heads kept, key/value heads kept): tiny llama and qwen2 have 4 query
# heads in 2 groups (heads 0,1 | 2,3); tiny gemma3 has 4 query heads sharing one group.
SPLITS = [("llama", "query", [0, 3], [0, 1]), ("llama", "group", [2, 3], [1]),
          ("qwen2", "query", [1, 2], [0, 1]), ("gemma3", "query", [1, 3], [0])]


@pytest.mark.parametrize("family,gqa,heads,kv", SPLITS)
def test_removing_heads_and_channels_equals_zeroing_their_output_columns(family, gqa, heads,
                                                                         kv):
    model, reference = tiny_model(family), tiny_model(family)
    parts = structure.model_parts(model)[0]
    channels = torch.arange(0, parts.intermediate, 3)
    structure.shrink_attention(parts, torch.tensor(heads), torch.tensor(kv))
    structure.shrink_mlp(parts, channels)
    assert parts.attention.q_proj.weight.shape[0] == len(heads) * parts.head_dim
    assert parts.attention.k_proj.weight.shape[0] == len(kv) * parts.head_dim
    assert parts.mlp.down_proj.weight.shape[1] == len(channels)
    # A removed head's output reaches the block only through its o_proj columns; a removed
    # key/value head only through its query heads (all removed with it).
    ref = structure.model_parts(reference)[0]
    hd = ref.head_dim
    for h in range(ref.heads):
        if h not in heads:
            ref.attention.o_proj.weight.data[:, h * hd:(h + 1) * hd] = 0
    gone = torch.ones(ref.intermediate, dtype=torch.bool)
    gone[channels] = False
    ref.mlp.down_proj.weight.data[:, gone] = 0
    x = _windows(2)
    torch.testing.assert_close(_logits(model, x), _logits(reference, x), rtol=1e-4, atol=1e-5)


def test_a_split_gqa_cannot_express_is_refused():
    parts = structure.model_parts(tiny_model("llama"))[0]
    with pytest.raises(PrunelabError, match="cannot express"):  # 2 heads from group 0, 1 from 1
        structure.shrink_attention(parts, torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(PrunelabError, match="every attention head"):
        structure.shrink_attention(parts, torch.tensor([], dtype=torch.long), torch.tensor([0]))
    with pytest.raises(PrunelabError, match="every MLP channel"):
        structure.shrink_mlp(parts, torch.tensor([], dtype=torch.long))


# (family, method, options, which loader the saved directory needs)
ROUND_TRIPS = [
    ("llama", "magnitude-sp", {}, "plain"),
    ("llama", "flap", {"structure": "UL-UM"}, "plain"),  # bias: Llama's bias flags say it
    ("llama", "flap", {}, "loader"),  # per-layer sizes
    ("qwen2", "wanda-sp", {"heads": 0.5}, "plain"),
    ("qwen2", "flap", {"structure": "UL-UM"}, "loader"),  # Qwen2 never builds an o_proj bias
    ("gemma3", "flap", {"heads": 0.5, "structure": "UL-UM", "bias": False}, "plain"),
    ("gemma3", "flap", {}, "loader"),
]


@pytest.mark.parametrize("family,method,options,route", ROUND_TRIPS)
def test_saved_directory_reloads_with_identical_logits(tmp_path, family, method, options,
                                                       route):
    from transformers import AutoModelForCausalLM

    from prunelab.zoo.models import load_model

    loaded = tiny_loaded(family)
    calibration = tmp_path / "calib.txt"
    calibration.write_text("Pruning removes whole heads and channels from a network. " * 200)
    result = prunelab.prune(loaded, method, 0.4, calibration=prunelab.CalibrationConfig(
        str(calibration), 4, 32, 0), progress=False, **options)
    out = save(loaded, tmp_path / "out", result)
    x = _windows(2)
    expected = _logits(loaded.model, x)
    assert structure.needs_loader(loaded.model.config) == (route == "loader")
    if route == "plain":
        plain = AutoModelForCausalLM.from_pretrained(out).eval()
        assert torch.equal(_logits(plain, x), expected)
    else:
        with pytest.raises(Exception):  # plain transformers refuses the per-layer shapes
            AutoModelForCausalLM.from_pretrained(out)
        assert torch.equal(_logits(structure.load_pretrained(out), x), expected)
    again = load_model(out)  # prunelab's own loading picks the route itself
    assert torch.equal(_logits(again.model, x), expected)
    size = json.loads((out / "prunelab.json").read_text())["pruning"]["model_size"]
    assert size["after"]["parameters"] < size["before"]["parameters"]
    assert size["after"] == structure.model_size(again.model)


def test_parameters_removed_are_counted_and_meet_the_target():
    model = tiny_model("llama")
    before = sum(p.numel() for n, p in model.named_parameters() if "layers" in n
                 and n.endswith("weight") and p.dim() == 2)
    records = prune_blocks(model, make_method("magnitude-sp"), 0.4, None, None, progress=False)
    after = sum(p.numel() for n, p in model.named_parameters() if "layers" in n
                and n.endswith("weight") and p.dim() == 2)
    removed = sum(r.removed for r in records)
    assert removed == before - after
    assert sum(r.numel_before for r in records) == before
    share = removed / before
    assert abs(share - 0.4) < 3 * 64 / (before / 2)  # within one channel of each layer
    down = [r for r in records if r.name.endswith("down_proj")]
    assert all(r.notes["shape_before"] == [64, 128] for r in down)
    assert all(0 < r.achieved_sparsity < 1 for r in down)


def _uniform_counts(parts, sparsity):
    """The uniform rule of methods/structured.py, written out for tiny llama (query units)."""
    g, kv, hd, hidden = parts.group_size, parts.kv_heads, parts.head_dim, parts.hidden
    total = 2 * parts.heads * hd * hidden + 2 * kv * hd * hidden + 3 * hidden * parts.intermediate
    units = math.floor(sparsity * g + 1e-9)
    channels = round((sparsity * total - units * kv * 2 * hd * hidden) / (3 * hidden))
    return units, channels


def _expected_keep(head_scores, channel_scores, parts, units, channels):
    g = parts.group_size
    keep_heads = []
    for j in range(parts.kv_heads):
        group = head_scores[j * g:(j + 1) * g]
        order = sorted(range(g), key=lambda k: (group[k].item(), k))
        keep_heads += sorted(j * g + k for k in order[units:])
    order = sorted(range(len(channel_scores)), key=lambda c: (channel_scores[c].item(), c))
    return keep_heads, sorted(order[channels:])


def _check_kept(block_parts, dense_parts, keep_heads, keep_channels):
    hd = dense_parts.head_dim
    columns = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in keep_heads])
    torch.testing.assert_close(block_parts.attention.o_proj.weight,
                               dense_parts.attention.o_proj.weight[:, columns])
    torch.testing.assert_close(block_parts.mlp.down_proj.weight,
                               dense_parts.mlp.down_proj.weight[:, keep_channels])
    return columns


@pytest.mark.parametrize("metric", ["WIFV", "IFV", "WIFN"])
def test_flap_uniform_follows_the_reference_rules(metric):
    windows = _windows()
    model, dense = tiny_model("llama"), tiny_model("llama")
    prune_blocks(model, make_method("flap", {"structure": "UL-UM", "metric": metric}), 0.6,
                 None, windows, batch_size=3, progress=False)
    inputs = _dense_inputs(dense, windows)  # FLAP: every decision from the dense model
    for b, (parts, dparts) in enumerate(zip(structure.model_parts(model),
                                            structure.model_parts(dense))):
        scores = []
        for name, layer in (("self_attn.o_proj", dparts.attention.o_proj),
                            ("mlp.down_proj", dparts.mlp.down_proj)):
            x, W = inputs[(b, name)], layer.weight
            if metric == "WIFN":
                score = (W.abs() * x.pow(2).mean(0).sqrt()[None, :]).mean(0)
            else:
                score = x.var(0) * (W.pow(2).sum(0) if metric == "WIFV" else 1)
            scores.append(score)
        head_scores = (scores[0] ** 2).reshape(-1, dparts.head_dim).sum(1)
        units, channels = _uniform_counts(dparts, 0.6)
        assert units == 1  # each group of two loses its weaker head
        keep_heads, keep_channels = _expected_keep(head_scores, scores[1], dparts, units,
                                                   channels)
        columns = _check_kept(parts, dparts, keep_heads, keep_channels)
        # Bias compensation: W[:, removed] · mean(x[removed]) on each output projection.
        gone_cols = [c for c in range(dparts.heads * dparts.head_dim) if c not in columns]
        gone_ch = [c for c in range(dparts.intermediate) if c not in keep_channels]
        mean_o = inputs[(b, "self_attn.o_proj")].mean(0)
        mean_d = inputs[(b, "mlp.down_proj")].mean(0)
        torch.testing.assert_close(parts.attention.o_proj.bias,
                                   dparts.attention.o_proj.weight[:, gone_cols] @ mean_o[gone_cols],
                                   rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(parts.mlp.down_proj.bias,
                                   dparts.mlp.down_proj.weight[:, gone_ch] @ mean_d[gone_ch],
                                   rtol=1e-4, atol=1e-6)


def test_bias_compensation_keeps_the_mean_output():
    """On the calibration data, the compensated block's output projections have the dense
    mean output: what the removed channels added on average is put back as a bias."""
    windows = _windows()
    dense = tiny_model("qwen2")
    inputs = _dense_inputs(dense, windows[:1])
    model = tiny_model("qwen2")
    prune_blocks(model, make_method("flap", {"structure": "UL-UM"}), 0.5, None, windows[:1],
                 progress=False)
    parts, dparts = structure.model_parts(model)[0], structure.model_parts(dense)[0]
    x = inputs[(0, "mlp.down_proj")]
    keep = [c for c in range(dparts.intermediate)
            if any(torch.equal(parts.mlp.down_proj.weight[:, k], dparts.mlp.down_proj.weight[:, c])
                   for k in range(parts.intermediate))]
    ours = parts.mlp.down_proj(x[:, keep]).mean(0)
    torch.testing.assert_close(ours, dparts.mlp.down_proj(x).mean(0), rtol=1e-4, atol=1e-5)


def test_flap_adaptive_pools_standardised_scores_by_parameter_cost():
    windows = _windows()
    model, dense = tiny_model("llama"), tiny_model("llama")
    method = make_method("flap", {"gqa": "group"})
    records = prune_blocks(model, method, 0.35, None, windows, progress=False)
    inputs = _dense_inputs(dense, windows)
    removed_scores, kept_scores = [], []
    for b, (parts, dparts) in enumerate(zip(structure.model_parts(model),
                                            structure.model_parts(dense))):
        o, d = inputs[(b, "self_attn.o_proj")], inputs[(b, "mlp.down_proj")]
        attn = o.var(0) * dparts.attention.o_proj.weight.pow(2).sum(0)
        attn = attn ** 2
        attn = ((attn - attn.mean()) / attn.std()).reshape(-1, dparts.head_dim).mean(1)
        group = attn.reshape(dparts.kv_heads, -1).mean(1)  # a key/value group's score
        mlp = d.var(0) * dparts.mlp.down_proj.weight.pow(2).sum(0)
        mlp = (mlp - mlp.mean()) / mlp.std()
        kept_groups = parts.kv_heads
        dense_k = dparts.attention.k_proj.weight
        kept_kv = [j for j in range(dparts.kv_heads) if any(
            torch.equal(parts.attention.k_proj.weight[:dparts.head_dim * kept_groups].reshape(
                kept_groups, dparts.head_dim, -1)[i],
                dense_k.reshape(dparts.kv_heads, dparts.head_dim, -1)[j])
            for i in range(kept_groups))]
        kept_ch = {c for c in range(dparts.intermediate) if any(
            torch.equal(dparts.mlp.down_proj.weight[:, c], parts.mlp.down_proj.weight[:, k])
            for k in range(parts.intermediate))}
        best_group, best_channel = int(group.argmax()), int(mlp.argmax())
        for j in range(dparts.kv_heads):
            if j != best_group:
                (kept_scores if j in kept_kv else removed_scores).append(group[j].item())
        for c in range(dparts.intermediate):
            if c != best_channel:
                (kept_scores if c in kept_ch else removed_scores).append(mlp[c].item())
    # One threshold over the pooled, standardised scores of every layer.
    assert max(removed_scores) <= min(kept_scores) + 1e-5
    share = sum(r.removed for r in records) / sum(r.numel_before for r in records)
    assert abs(share - 0.35) < 0.03


def test_wanda_sp_and_magnitude_sp_score_output_columns():
    windows = _windows()
    for method in ("wanda-sp", "magnitude-sp"):
        model, dense = tiny_model("llama"), tiny_model("llama")
        prune_blocks(model, make_method(method), 0.6, None, windows, progress=False)
        # Block 0 reads the embeddings in both models, so its inputs are the dense ones.
        inputs = _dense_inputs(dense, windows)
        parts, dparts = structure.model_parts(model)[0], structure.model_parts(dense)[0]
        scores = []
        for name, layer in (("self_attn.o_proj", dparts.attention.o_proj),
                            ("mlp.down_proj", dparts.mlp.down_proj)):
            W = layer.weight
            if method == "wanda-sp":
                scores.append((W.abs() * inputs[(0, name)].pow(2).sum(0).sqrt()[None]).mean(0))
            else:
                scores.append(W.norm(dim=0))
        head_scores = scores[0].reshape(-1, dparts.head_dim).sum(1)
        units, channels = _uniform_counts(dparts, 0.6)
        keep_heads, keep_channels = _expected_keep(head_scores, scores[1], dparts, units,
                                                   channels)
        _check_kept(parts, dparts, keep_heads, keep_channels)
        assert parts.attention.o_proj.bias is None and parts.mlp.down_proj.bias is None


def test_per_part_ratios_and_their_agreement_with_the_target():
    model = tiny_model("llama")
    prune_blocks(model, make_method("magnitude-sp", {"heads": 0.5, "channels": 0.25}),
                 _share(0.5, 0.25), None, None, progress=False)
    assert structure.layer_shapes(model)[0]["heads"] == 2
    assert structure.layer_shapes(model)[0]["intermediate"] == 96
    with pytest.raises(PrunelabError, match="not the 0.1 asked"):
        prune_blocks(tiny_model("llama"), make_method("magnitude-sp", {"heads": 0.5,
                                                                       "channels": 0.25}),
                     0.1, None, None, progress=False)
    # heads alone: the channels make up the rest of the target
    model = tiny_model("llama")
    prune_blocks(model, make_method("magnitude-sp", {"heads": 0.5}), 0.5, None, None,
                 progress=False)
    shape = structure.layer_shapes(model)[0]
    assert shape["heads"] == 2 and shape["intermediate"] < 128


def _share(heads, channels):
    hidden, hd, kv, h, inter = 64, 16, 2, 4, 128
    total = 2 * h * hd * hidden + 2 * kv * hd * hidden + 3 * hidden * inter
    return (heads * h * 2 * hd * hidden + int(channels * inter) * 3 * hidden) / total


def test_recipes_and_the_api_reach_the_structured_methods():
    from prunelab.study.stages import PruneStage

    stage = PruneStage(method="flap", sparsity=0.3, options={"structure": "UL-UM"})
    assert stage.problems(None) == [] and stage.needs_calibration()
    assert "no option" in PruneStage(method="wanda-sp", sparsity=0.3,
                                     options={"metric": "WIFV"}).problems(None)[0]
    assert "outside [0, 1)" in PruneStage(method="flap", sparsity=0.3,
                                          options={"heads": 1.5}).problems(None)[0]
    loaded = tiny_loaded("llama")
    record = PruneStage(method="magnitude-sp", sparsity=0.3).run(loaded, None, 0)
    assert record["model_size"]["after"]["parameters"] < record["model_size"]["before"][
        "parameters"]
    assert abs(record["overall_sparsity"] - 0.3) < 0.02


def test_the_unit_order_takes_each_groups_lowest_heads():
    from prunelab.methods.structured import AttentionUnits

    units = AttentionUnits(heads=6, kv_heads=2, head_dim=1, hidden=1, by_group=False)
    order, scores = units.order(torch.tensor([3.0, 1.0, 2.0, 0.5, 9.0, 0.7]))
    assert order == [[1, 3], [2, 5], [0, 4]]
    torch.testing.assert_close(scores, torch.tensor([0.75, 1.35, 6.0]))
    keep, kv = units.keep_after(order, 1)
    assert keep.tolist() == [0, 2, 4, 5] and kv.tolist() == [0, 1]
    grouped = AttentionUnits(heads=6, kv_heads=2, head_dim=1, hidden=1, by_group=True)
    order, _ = grouped.order(torch.tensor([3.0, 1.0, 2.0, 0.5, 9.0, 0.7]))
    keep, kv = grouped.keep_after(order, 1)
    assert keep.tolist() == [3, 4, 5] and kv.tolist() == [1]


def test_a_model_without_locatable_heads_is_refused():
    with pytest.raises(PrunelabError, match="cannot locate the attention heads"):
        make_method("flap").check_model(tiny_model("gpt2"))
    loaded = tiny_loaded("gpt2")
    loaded.tokenizer = tiny_tokenizer()
    with pytest.raises(PrunelabError, match="cannot locate"):
        prunelab.prune(loaded, "magnitude-sp", 0.3, progress=False)


# ----------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for family in ("llama", "gpt2"):
        tiny_model(family).save_pretrained(root / family)
        tiny_tokenizer().save_pretrained(root / family)
    text = root / "calib.txt"
    text.write_text("Structured pruning removes heads and channels from a network. " * 300)
    return root


def _run(*args):
    import contextlib
    import io

    from prunelab.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("model,args,fragment", [
    ("llama", ["--method", "flap", "--sparsity", "0.3", "--option", "heads=0.25"],
     "cannot express"),
    ("llama", ["--method", "magnitude-sp", "--sparsity", "0.3", "--option", "heads=0.9"],
     "every attention head"),
    ("llama", ["--method", "magnitude-sp", "--sparsity", "0.95", "--option", "heads=0"],
     "every MLP channel"),
    ("llama", ["--method", "flap", "--sparsity", "0.9"], "cannot be met"),
    ("llama", ["--method", "magnitude-sp", "--pattern", "2:4"], "does not support N:M"),
    ("llama", ["--method", "flap", "--sparsity", "0.3", "--option", "structure=UL"],
     "is not one of"),
    ("gpt2", ["--method", "wanda-sp", "--sparsity", "0.3"], "cannot locate the attention heads"),
])
def test_bad_structured_input_is_one_line_and_writes_nothing(tmp_path, model_dirs, model, args,
                                                             fragment):
    out = tmp_path / "out"
    code, _, err = _run("prune", str(model_dirs / model), "--out", str(out), "--calib-source",
                        str(model_dirs / "calib.txt"), "--calib-samples", "4", "--seqlen", "32",
                        "--no-ppl", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_cli_prunes_saves_and_info_shows_the_sizes(tmp_path, model_dirs):
    out = tmp_path / "flap"
    code, stdout, err = _run("prune", str(model_dirs / "llama"), "--out", str(out), "--method",
                             "flap", "--sparsity", "0.3", "--calib-source",
                             str(model_dirs / "calib.txt"), "--calib-samples", "4",
                             "--seqlen", "32", "--no-ppl")
    assert code == 0, err
    assert "parameters" in stdout and "less" in stdout
    code, info, _ = _run("info", str(out))
    assert code == 0 and "parameters" in info and "weights file" in info
    code, ppl, err = _run("ppl", str(out), "--source", str(model_dirs / "calib.txt"),
                          "--seqlen", "32", "--windows", "2")
    assert code == 0 and "perplexity" in ppl, err


def test_seap_depth_schedule_is_the_logistic_of_the_reference():
    from prunelab.methods.seap import logistic_shares

    shares = logistic_shares(10, 0.3, k=0.8, x0=0.3, keep_first=2, keep_last=2)
    assert shares[:2] == [0.0, 0.0] and shares[-2:] == [0.0, 0.0]
    # SEAP's formula, with Λ scaled so that the mean over all ten layers is the target.
    shape = [1 / (1 + math.exp(-0.8 * ((ell - 2) / 5 - 0.3))) for ell in range(2, 8)]
    lam = 0.3 * 10 / sum(shape)
    assert shares[2:8] == pytest.approx([lam * s for s in shape])
    assert sum(shares) / 10 == pytest.approx(0.3)
    assert shares[2] < shares[7]  # deeper layers lose more
    with pytest.raises(PrunelabError, match="would remove all of a layer"):
        logistic_shares(10, 0.7, 0.8, 0.3, 2, 2)


def test_seap_prunes_each_layer_by_its_depth_share():
    model = tiny_model("gemma3")  # three layers: keep the first whole, prune the others
    method = make_method("seap", {"keep_first": 1, "keep_last": 0, "bias": "false"})
    records = prune_blocks(model, method, 0.3, None, _windows(), progress=False)
    shapes = structure.layer_shapes(model)
    assert shapes[0] == {"heads": 4, "kv_heads": 1, "intermediate": 128, "bias": []}
    assert shapes[1]["intermediate"] > shapes[2]["intermediate"]  # deeper loses more
    share = sum(r.removed for r in records) / sum(r.numel_before for r in records)
    assert abs(share - 0.3) < 0.02
    with pytest.raises(PrunelabError, match="depth schedule"):
        make_method("seap", {"heads": 0.5})
