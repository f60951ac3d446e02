"""Models loaded and computed in bf16 or fp16 (`--dtype`, a recipe's `dtype:`): statistics
accumulated in fp32 whatever the model's dtype, weights written back and saved in the model's
dtype, the dtype recorded, and a dtype the device cannot compute in refused before loading."""

import json

import pytest
import torch

from prunelab import devices, engine
from prunelab.checks import check_dtype_name
from prunelab.errors import PrunelabError
from prunelab.study.plan import point_config
from prunelab.study.recipe import parse_recipe
from prunelab.testing import tiny_loaded
from prunelab.zoo.weights import read_safetensors_header
from tests.cli_helpers import assert_user_error, run

TEXT = "Pruning removes weights from a network, and the network forgets. " * 200


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def _calibration(text):
    from prunelab.data.corpora import CalibrationConfig

    return CalibrationConfig(str(text), 8, 64, 0)


def test_precision_names_map_to_torch_dtypes_and_back():
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16),
                        ("fp16", torch.float16)):
        assert devices.torch_dtype(name) is dtype and devices.dtype_name(dtype) == name
        assert devices.torch_dtype(dtype) is dtype
    for bad in ("fp8", "float32", "", "BF16"):
        with pytest.raises(PrunelabError, match="use one of fp32, bf16, fp16"):
            check_dtype_name(bad)
    with pytest.raises(PrunelabError, match="not a precision"):
        devices.torch_dtype(torch.float64)


def test_the_cpu_computes_in_every_precision():
    for name in ("fp32", "bf16", "fp16"):
        where, dtype = devices.resolve_placement("cpu", name)
        assert where == torch.device("cpu") and dtype == devices.torch_dtype(name)


def test_a_precision_the_device_cannot_multiply_in_is_refused(monkeypatch):
    monkeypatch.setattr(devices, "_can_matmul", lambda dtype, device: dtype == torch.float32)
    with pytest.raises(PrunelabError, match="cannot multiply fp16 matrices on cpu"):
        devices.check_dtype("fp16", "cpu")
    devices.check_dtype("fp32", "cpu")


def test_bf16_on_a_gpu_without_bf16_arithmetic_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(PrunelabError, match="has no bf16 arithmetic.*--dtype fp16"):
        devices.check_dtype("bf16", torch.device("cuda"))


def _stats_dtypes(monkeypatch) -> set:
    """Record the dtype of every tensor of every statistic the engine hands a method."""
    seen: set = set()
    real = engine._collect

    def spy(*args, **kwargs):
        stats = real(*args, **kwargs)
        for layer in stats.values():
            for value in layer.values():
                parts = list(value) if isinstance(value, tuple) else [value]  # MeanVar
                tensors = [v for v in parts if isinstance(v, torch.Tensor)]
                assert tensors, type(value)
                seen.update(t.dtype for t in tensors)
        return stats

    monkeypatch.setattr(engine, "_collect", spy)
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method,options", [
    ("wanda", {}), ("sparsegpt", {}), ("gptq", {"bits": 4, "group_size": 32}), ("flap", {}),
    ("dsnot", {})], ids=["wanda", "sparsegpt", "gptq", "flap", "dsnot"])
def test_statistics_are_fp32_and_weights_stay_in_the_models_dtype(monkeypatch, text, dtype,
                                                                    method, options):
    from prunelab.compress import prune

    seen = _stats_dtypes(monkeypatch)
    loaded = tiny_loaded("llama")
    loaded.model.to(dtype)
    quantizes = method == "gptq"
    result = prune(loaded, method, None if quantizes else 0.3 if method == "flap" else 0.5,
                   calibration=_calibration(text), progress=False, **options)
    assert seen == {torch.float32}, seen  # Σx², Hessians, means and variances
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    if not quantizes:
        assert result.overall_sparsity == pytest.approx(0.3 if method == "flap" else 0.5,
                                                        abs=0.02)


def test_bf16_masks_of_wanda_agree_with_fp32_on_a_tiny_model(text):
    """Scores are computed on fp32 copies of the weights: bf16 rounding of the weights moves
    only near-ties across the threshold."""
    from prunelab.compress import prune

    masks = {}
    for dtype in (torch.float32, torch.bfloat16):
        loaded = tiny_loaded("llama")
        loaded.model.to(dtype)
        masks[dtype] = prune(loaded, "wanda", 0.5, calibration=_calibration(text),
                             progress=False, keep_masks=True).masks
    agree = torch.cat([(masks[torch.float32][k] == masks[torch.bfloat16][k]).flatten()
                       for k in masks[torch.float32]]).float().mean().item()
    assert agree >= 0.97, agree


def test_a_bf16_prune_is_saved_in_bf16_and_says_so(tiny_dir, text, tmp_path):
    out = tmp_path / "pruned"
    result = run("prune", str(tiny_dir), "--out", str(out), "--sparsity", "0.5",
                 "--calib-source", str(text), "--calib-samples", "4", "--seqlen", "64",
                 "--no-ppl", "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "prunelab.json").read_text())
    assert record["model"]["dtype"] == "bf16"
    header, _ = read_safetensors_header(next(out.glob("*.safetensors")))
    assert {e["dtype"] for k, e in header.items() if k != "__metadata__"} == {"BF16"}
    from prunelab.zoo.models import load_model

    again = load_model(out, dtype="bf16")
    assert {p.dtype for p in again.model.parameters()} == {torch.bfloat16}
    weight = again.model.model.layers[0].mlp.down_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_an_fp32_save_records_fp32(tiny_dir, tmp_path):
    from prunelab.checkpoint import save
    from prunelab.zoo.models import load_model

    save(load_model(tiny_dir), tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "prunelab.json").read_text())["model"]["dtype"] \
        == "fp32"


def test_ppl_in_bf16_is_close_to_fp32(tiny_dir, text):
    values = {}
    for dtype in ("fp32", "bf16"):
        result = run("ppl", str(tiny_dir), "--source", str(text), "--seqlen", "64",
                     "--windows", "4", "--dtype", dtype)
        assert result.returncode == 0, result.stderr
        values[dtype] = float(result.stdout.split()[1])
    assert values["bf16"] == pytest.approx(values["fp32"], rel=0.02)


def test_the_cli_refuses_a_dtype_the_device_cannot_do_before_loading(monkeypatch, tiny_dir,
                                                                     text, tmp_path):
    from prunelab.zoo import models

    monkeypatch.setattr(devices, "_can_matmul", lambda dtype, device: False)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    out = tmp_path / "never"
    assert_user_error(run("prune", str(tiny_dir), "--out", str(out), "--sparsity", "0.5",
                          "--calib-source", str(text), "--dtype", "fp16"),
                      "torch cannot multiply fp16 matrices on cpu")
    assert not out.exists()
    assert_user_error(run("ppl", str(tiny_dir), "--source", str(text), "--dtype", "bf16"),
                      "torch cannot multiply bf16 matrices")
    assert_user_error(run("quantize", str(tiny_dir), "--out", str(out), "--calib-source",
                          str(text), "--dtype", "bf16"), "torch cannot multiply bf16")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_cli_refuses_a_gpu_that_is_not_there(tiny_dir, text, tmp_path):
    assert_user_error(run("prune", str(tiny_dir), "--out", str(tmp_path / "x"), "--sparsity",
                          "0.5", "--calib-source", str(text), "--device", "cuda",
                          "--dtype", "bf16"), "torch sees no CUDA GPU here")
    assert_user_error(run("divergence", str(tiny_dir), str(tiny_dir), "--source", str(text),
                          "--device", "cuda"), "torch sees no CUDA GPU here")


# -- recipes ------------------------------------------------------------------------------------

def _recipe(**extra):
    return parse_recipe({"name": "d", "models": ["a", "b"], "tasks": ["t"],
                         "compressions": [{"method": "wanda", "sparsity": [0.5]}], **extra})


def test_a_recipe_dtype_is_in_the_point_key_only_when_not_fp32():
    from prunelab.study.plan import DENSE
    from prunelab.study.testing import FakeBackend

    task = FakeBackend().describe_tasks(["digits:1"])[0]
    plain, fp32 = _recipe(), _recipe(dtype="fp32")
    assert plain.fingerprint() == fp32.fingerprint()
    assert "dtype" not in point_config(plain, "a", DENSE, task)
    bf16 = _recipe(dtype="bf16", model_dtypes={"b": "fp32"})
    assert bf16.fingerprint() != plain.fingerprint()
    assert point_config(bf16, "a", DENSE, task)["dtype"] == "bf16"
    assert point_config(bf16, "b", DENSE, task) == point_config(plain, "b", DENSE, task)
    assert bf16.dtype_of("a") == "bf16" and bf16.dtype_of("b") == "fp32"


def test_bad_recipe_dtypes_are_refused_with_their_path():
    with pytest.raises(PrunelabError, match="dtype"):
        _recipe(dtype="fp64")
    with pytest.raises(PrunelabError, match="model_dtypes names 'c'"):
        _recipe(model_dtypes={"c": "bf16"})


def test_the_runner_loads_each_model_in_its_dtype(tmp_path):
    from prunelab.study.runner import run_study
    from prunelab.study.testing import FakeBackend

    recipe = parse_recipe({"name": "d", "models": ["smollm2-135m", "tiny"],
                           "tasks": ["digits:1"], "dtype": "bf16",
                           "model_dtypes": {"tiny": "fp32"},
                           "compressions": [{"method": "wanda", "sparsity": [0.5]}]})
    backend = FakeBackend()
    run_study(recipe, tmp_path, backend=backend, progress=False)
    loads = [c for c in backend.calls if c[0] == "load"]
    assert ("load", "smollm2-135m", "bf16") in loads and ("load", "tiny") in loads


def test_study_dtype_flag_replaces_the_recipes(tmp_path):
    from prunelab.cli.study import _overrides

    assert _overrides(None, None, None, None, None, "bf16") == ["dtype=bf16"]
    with pytest.raises(PrunelabError, match="not a precision"):
        _overrides(None, None, None, None, None, "bf15")


def test_a_study_on_a_device_without_the_dtype_is_refused_before_loading(monkeypatch):
    from prunelab.study.backend import PrunelabBackend

    monkeypatch.setattr(devices, "_can_matmul", lambda dtype, device: dtype == torch.float32)
    monkeypatch.setattr("prunelab.study.checks.check_recipe", lambda recipe: [])
    problems = PrunelabBackend().check(_recipe(dtype="fp32", model_dtypes={"a": "fp16"}))
    assert problems == [("model_dtypes", "--dtype fp16 was asked for, but torch cannot "
                         "multiply fp16 matrices on cpu; use --dtype fp32, or a device that "
                         "computes in fp16 (--device cuda)")]


def test_a_bf16_gptq_model_packs_as_compressed_tensors(tiny_dir, text, tmp_path):
    """The packed codes are checked against the model's weights in the model's dtype (the
    dequantized value rounded to bf16), not in fp32."""
    out = tmp_path / "packed"
    result = run("quantize", str(tiny_dir), "--out", str(out), "--calib-source", str(text),
                 "--calib-samples", "4", "--seqlen", "64", "--no-ppl", "--dtype", "bf16",
                 "--format", "compressed-tensors", "--group-size", "32")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "prunelab.json").read_text())["model"]["dtype"] == "bf16"
    assert run("ppl", str(out), "--source", str(text), "--seqlen", "64", "--windows", "2",
               "--dtype", "bf16").returncode == 0
