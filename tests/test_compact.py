"""Compact sparse checkpoints (prunelab.compact): every layout round-trips bit for bit into a
transformers model, the sizes are what the layouts promise, and bad input is refused in one
line with nothing written."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_helpers import assert_user_error, run
from prunelab import compact, compact_dirs
from prunelab.errors import PrunelabError


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("Sparse matrices keep some weights and drop the others. " * 300)
    return path


def _prune(tiny_dir, text_file, out, *args):
    result = run("prune", str(tiny_dir), "--method", "magnitude", "--no-ppl", "--calib-source",
                 str(text_file), "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tiny_dir, text_file):
    """The tiny Llama pruned 50% unstructured and 2:4, written dense."""
    root = tmp_path_factory.mktemp("pruned")
    return {"50%": _prune(tiny_dir, text_file, root / "u50", "--sparsity", "0.5"),
            "2:4": _prune(tiny_dir, text_file, root / "nm24", "--pattern", "2:4")}


def _state(directory):
    from prunelab.zoo.models import load_model

    return load_model(directory).model.state_dict()


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kind", ["50%", "2:4"])
@pytest.mark.parametrize("layout", ["prunelab", "compressed-tensors"])
def test_pack_load_and_unpack_are_bit_exact(tmp_path, pruned, kind, layout):
    source = pruned[kind]
    packed = tmp_path / "packed"
    result = run("pack", str(source), "--out", str(packed), "--layout", layout)
    assert result.returncode == 0, result.stderr
    assert "x smaller" in result.stdout
    dense = _state(source)
    _assert_same(dense, _state(packed))  # prunelab.load_model reads it transparently
    run("unpack", str(packed), "--out", str(tmp_path / "back"))
    _assert_same(dense, _state(tmp_path / "back"))
    layouts = {e["layout"] for e in compact.read_manifest(packed)["layers"].values()}
    expected = {("50%", "prunelab"): {"sparse-bitmask"},
                ("50%", "compressed-tensors"): {"sparse-bitmask"},
                ("2:4", "prunelab"): {"nm-index"},
                ("2:4", "compressed-tensors"): {"sparse-24-bitmask"}}[kind, layout]
    assert layouts == expected
    config = json.loads((packed / "config.json").read_text())
    sparsity = config["quantization_config"]["sparsity_config"] \
        if "quantization_config" in config else None
    if layout == "compressed-tensors":  # the former compressed-tensors entry, for its readers
        assert sparsity["format"] == expected.pop()
    else:
        assert (sparsity is None) is (kind == "2:4")
    # the unpacked directory is plain save_pretrained output
    assert not (tmp_path / "back" / compact.COMPACT_FILE).exists()
    assert "quantization_config" not in json.loads((tmp_path / "back" / "config.json").read_text())


def test_the_layout_tensors_follow_compressed_tensors_names(tmp_path, pruned):
    run("pack", str(pruned["50%"]), "--out", str(tmp_path / "u"))
    run("pack", str(pruned["2:4"]), "--out", str(tmp_path / "n"), "--layout",
        "compressed-tensors")
    name = "model.layers.0.mlp.down_proj"
    unstructured = load_file(tmp_path / "u" / "model.safetensors")
    assert {f"{name}.{k}" for k in ("shape", "compressed", "bitmask", "row_offsets")} <= set(
        unstructured)
    assert f"{name}.weight" not in unstructured
    rows, cols = unstructured[f"{name}.shape"].tolist()
    assert unstructured[f"{name}.bitmask"].shape == (rows, math.ceil(cols / 8))
    nm = load_file(tmp_path / "n" / "model.safetensors")
    assert nm[f"{name}.compressed"].shape == (rows, cols // 2)
    assert nm[f"{name}.shape"].shape == (2, 1)


def test_two_four_indices_take_three_bits_per_group():
    torch.manual_seed(0)
    weight = torch.randn(8, 64)
    groups = weight.reshape(-1, 4)
    groups.scatter_(1, groups.abs().topk(2, dim=1, largest=False).indices, 0.0)
    tensors, entry = compact.pack_matrix("m", weight, group=compact.GroupCode(2, 4))
    assert entry["layout"] == "nm-index"
    assert tensors["m.pattern_index"].numel() == 8 * 16 * 3 // 8
    assert torch.equal(compact.unpack_matrix("m", tensors, entry), weight)


def test_bf16_values_and_negative_zero_survive():
    torch.manual_seed(1)
    weight = torch.randn(4, 16).to(torch.bfloat16)
    weight[weight.abs() < 0.7] = 0
    weight[0, 0] = -0.0
    tensors, entry = compact.pack_matrix("m", weight)
    back = compact.unpack_matrix("m", tensors, entry)
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.view(torch.int16), weight.view(torch.int16))


def test_dense_matrices_stay_dense():
    assert compact.pack_matrix("m", torch.randn(4, 16)) is None


def test_pack_dtype_bf16_halves_values(tmp_path, pruned):
    run("pack", str(pruned["50%"]), "--out", str(tmp_path / "fp32"))
    result = run("pack", str(pruned["50%"]), "--out", str(tmp_path / "bf16"), "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    fp32 = compact_dirs.physical_account(tmp_path / "fp32")
    bf16 = compact_dirs.physical_account(tmp_path / "bf16")
    assert bf16["dense_bytes"] * 2 == fp32["dense_bytes"]
    reference = {k: v.to(torch.bfloat16) for k, v in _state(pruned["50%"]).items()}
    from prunelab.zoo.models import load_model

    _assert_same(reference, load_model(tmp_path / "bf16", dtype=torch.bfloat16)
                 .model.state_dict())


def test_prune_format_compact_writes_it_directly(tmp_path, tiny_dir, text_file, pruned):
    out = _prune(tiny_dir, text_file, tmp_path / "direct", "--pattern", "2:4", "--format",
                 "compact")
    assert compact.is_compact(out)
    _assert_same(_state(pruned["2:4"]), _state(out))
    record = json.loads((out / "prunelab.json").read_text())
    assert record["storage"]["format"] == "compact"
    assert record["storage"]["safetensors_bytes"] == (out / "model.safetensors").stat().st_size


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_pruned_then_quantized_codes_round_trip(tmp_path, tiny_dir, text_file, pattern):
    """SparseGPT's joint mode: the kept 4-bit codes are stored, not values."""
    import prunelab

    loaded = prunelab.load_model(tiny_dir)
    calibration = prunelab.CalibrationConfig(str(text_file), 8, 64, 0)
    result = prunelab.prune(loaded, "sparsegpt", 0.5 if pattern is None else None,
                            pattern=pattern, calibration=calibration, progress=False,
                            bits=4, group_size=32)
    out = prunelab.save(loaded, tmp_path / "q", result, format="compact")
    entries = compact.read_manifest(out)["layers"]
    assert entries and all(e["codes"]["bits"] == 4 for e in entries.values())
    _assert_same(loaded.model.state_dict(), _state(out))
    account = compact_dirs.physical_account(out)
    # per weight: half a 4-bit code, a mask bit (or 3/4 of one), a 32nd of an fp32 scale and
    # of an 8-bit zero point: 4.25 bits at most
    weights = account["prunable_dense_bytes"] / 4
    assert account["prunable_compact_bytes"] * 8 / weights <= 4.25 + 0.01


@pytest.mark.parametrize("kind", ["50%", "2:4"])
def test_quantize_format_compact(tmp_path, pruned, text_file, kind):
    """Quantizing a pruned directory: the kept codes are stored, and the N:M pattern is found
    in the weights (the quantization itself records none)."""
    out = tmp_path / "q"
    result = run("quantize", str(pruned[kind]), "--method", "rtn", "--bits", "4",
                 "--group-size", "32", "--format", "compact", "--no-ppl", "--calib-source",
                 str(text_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    from prunelab.zoo.models import load_model

    weight = load_model(out).model.model.layers[0].mlp.down_proj.weight
    assert (weight == 0).float().mean() >= 0.5  # the pruned zeros are still zeros
    layouts = {e["layout"] for e in compact.read_manifest(out)["layers"].values()}
    assert layouts == ({"nm-index"} if kind == "2:4" else {"sparse-bitmask"})


def test_physical_account_of_a_dense_directory_is_what_pack_writes(tmp_path, pruned):
    computed = compact_dirs.physical_account(pruned["2:4"])
    run("pack", str(pruned["2:4"]), "--out", str(tmp_path / "p"))
    measured = compact_dirs.physical_account(tmp_path / "p")
    assert computed["compact_bytes"] == measured["compact_bytes"]
    assert computed["dense_bytes"] == measured["dense_bytes"]
    # without prunelab.json the pattern is found in the weights, by both
    import shutil

    shutil.copytree(pruned["2:4"], tmp_path / "bare")
    (tmp_path / "bare" / "prunelab.json").unlink()
    assert compact_dirs.physical_account(tmp_path / "bare")["compact_bytes"] == measured[
        "compact_bytes"]
    run("pack", str(tmp_path / "bare"), "--out", str(tmp_path / "bare-p"))
    assert compact_dirs.physical_account(tmp_path / "bare-p")["pattern"] == "2:4"


def test_info_gives_the_physical_account(tmp_path, pruned):
    result = run("info", str(pruned["2:4"]))
    assert result.returncode == 0, result.stderr
    assert "physical account" in result.stdout and "compact" in result.stdout


# ---------------------------------------------------------------------------- bad input


def test_pack_refuses_a_dense_model(tmp_path, tiny_dir):
    out = tmp_path / "out"
    assert_user_error(run("pack", str(tiny_dir), "--out", str(out)),
                      "no sparse matrix that packing would make smaller")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["pack", "no/such/dir"], "is not a model directory"),
    (["pack", "DENSE", "--layout", "zip"], "unknown compact layout 'zip'"),
    (["pack", "DENSE", "--dtype", "int8"], "unknown value dtype 'int8'"),
    (["pack", "PACKED"], "is already a compact checkpoint"),
    (["pack", "DENSE", "--out", "DENSE"], "already exists"),
    (["unpack", "DENSE"], "is not a compact checkpoint"),
    (["unpack", "no/such/dir"], "is not a model directory"),
    (["prune", "smollm2-135m", "--out", "OUT", "--pattern", "2:32", "--format", "compact"],
     "stores N:M groups of at most 16"),
    (["prune", "smollm2-135m", "--out", "OUT", "--sparsity", "0.5", "--format",
      "compressed-tensors"], "prune writes --format dequantized or compact"),
])
def test_bad_arguments_are_refused(tmp_path, pruned, args, fragment):
    run("pack", str(pruned["50%"]), "--out", str(tmp_path / "packed"))
    names = {"DENSE": str(pruned["50%"]), "PACKED": str(tmp_path / "packed"),
             "OUT": str(tmp_path / "out")}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(run(*[names.get(a, a) for a in args]), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _packed_copy(tmp_path, pruned, kind="50%"):
    target = tmp_path / "packed"
    run("pack", str(pruned[kind]), "--out", str(target))
    return target


def _rewrite(directory, change):
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_a_truncated_file_is_refused(tmp_path, pruned):
    target = _packed_copy(tmp_path, pruned)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_user_error(run("unpack", str(target), "--out", str(tmp_path / "out")), "truncated")
    assert not (tmp_path / "out").exists()
    assert_user_error(run("ppl", str(target), "--windows", "1"), "truncated")


def test_a_mask_whose_count_disagrees_with_its_values_is_refused(tmp_path, pruned):
    target = _packed_copy(tmp_path, pruned)
    name = "model.layers.1.self_attn.q_proj"

    def flip(tensors):
        tensors[f"{name}.bitmask"][0, 0] ^= 1  # one more (or fewer) kept weight

    _rewrite(target, flip)
    assert_user_error(run("unpack", str(target), "--out", str(tmp_path / "out")),
                      f"{name}: its mask keeps")
    assert not (tmp_path / "out").exists()


def test_a_tensor_the_manifest_lists_but_the_file_lacks_is_refused(tmp_path, pruned):
    target = _packed_copy(tmp_path, pruned, "2:4")
    name = "model.layers.0.mlp.up_proj"
    _rewrite(target, lambda tensors: tensors.pop(f"{name}.pattern_index"))
    from prunelab.zoo.models import load_model

    with pytest.raises(PrunelabError, match="pattern_index"):
        load_model(target)


def test_a_damaged_manifest_is_refused(tmp_path, pruned):
    target = _packed_copy(tmp_path, pruned)
    (target / compact.COMPACT_FILE).write_text("{not json")
    assert_user_error(run("unpack", str(target), "--out", str(tmp_path / "out")),
                      "not readable JSON")


def test_a_pattern_the_weights_break_is_refused():
    weight = torch.ones(2, 8)
    with pytest.raises(PrunelabError, match="breaks the 2:4 pattern"):
        compact.nm_positions(weight != 0, compact.GroupCode(2, 4), "m")


@pytest.mark.parametrize("key, value, fragment", [
    ("quantization_config", {"format": "pack-quantized"}, "packed compressed-tensors"),
    ("prunelab_structure", {}, "structurally pruned"),
])
def test_checkpoints_the_format_does_not_hold_are_refused(tmp_path, pruned, key, value,
                                                          fragment):
    target = tmp_path / "ct"
    import shutil

    shutil.copytree(pruned["50%"], target)
    config = json.loads((target / "config.json").read_text())
    config[key] = value
    (target / "config.json").write_text(json.dumps(config))
    assert_user_error(run("pack", str(target), "--out", str(tmp_path / "out")), fragment)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- the study


def test_a_study_reports_the_physical_account(tmp_path):
    from prunelab.report import build_report
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.runner import run_study
    from prunelab.study.testing import FakeBackend

    recipe = parse_recipe({"name": "phys", "models": ["m"], "tasks": ["digits"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.5]}],
                           "perplexity": {}, "physical_account": {"values": "bf16"},
                           "eval": {"limit": 10}, "analysis": {"n_boot": 50}})
    run_study(recipe, tmp_path, backend=FakeBackend(), progress=False)
    build_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Physical account" in md and "| model | stages | perplexity | dense MB |" in md


def test_the_measure_on_a_real_model_matches_pack(tmp_path, pruned):
    from prunelab.zoo.models import load_model

    measured = compact.model_account(load_model(pruned["2:4"]).model, values="fp32")
    assert measured["pattern"] == "2:4"
    run("pack", str(pruned["2:4"]), "--out", str(tmp_path / "p"))
    written = compact_dirs.physical_account(tmp_path / "p")
    assert measured["compact_bytes"] == written["compact_bytes"]
    assert measured["prunable_compact_bytes"] == written["prunable_compact_bytes"]
