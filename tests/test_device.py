"""A study on an accelerator: with `PrunelabBackend(device)` every stage, evaluation and
fine-tuning runs where the backend put the model. The CUDA tests are skipped where torch sees
no GPU (CI); they run on a GPU machine with `pytest tests/test_device.py`."""

import pytest
import torch

from prunelab.arch import to_device
from prunelab.study.backend import PrunelabBackend
from prunelab.study.recipe import parse_recipe
from prunelab.study.results import load_run
from prunelab.study.runner import run_study
from prunelab.tasks.base import Item, Task
from prunelab.tasks.registry import register
from tests.test_study_encoder import _recipe as encoder_recipe

GPU = "cuda"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_to_device_moves_every_tensor_of_a_nested_batch():
    batch = {"ids": torch.ones(2, 3), "pair": (torch.zeros(1), [torch.ones(1), "text"]), "n": 4}
    moved = to_device(batch, torch.device("meta"))
    assert moved["ids"].is_meta and moved["pair"][0].is_meta and moved["pair"][1][0].is_meta
    assert moved["pair"][1][1] == "text" and moved["n"] == 4
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)


def test_the_cpu_device_keeps_the_keys_of_a_run_without_one():
    assert PrunelabBackend("cpu").versions() == PrunelabBackend().versions()


def _devfam(level: int, n: int = 60) -> Task:
    items = [Item(id=f"d{i}", input=f"What is {i} plus {level}?",
                  choices=(str(i + level), str(i + level + 1), "house"), gold=(0,))
             for i in range(n)]
    return Task(name=f"devfam:{level}", family="devfam", axis="digits", level=level,
                level_rank=level - 1, kind="mc", loader=lambda: items)


def _decoder_recipe(model, text):
    calibration = {"source": str(text), "n_samples": 4, "seqlen": 64}
    return parse_recipe({
        "name": "dev", "models": [str(model)], "tasks": ["devfam:1", "devfam:2"],
        "compressions": [
            {"method": "magnitude", "sparsity": [0.5]},
            {"method": "wanda", "sparsity": [0.5]},
            {"method": "sparsegpt", "patterns": ["2:4"]},
            {"method": "gptq", "bits": [4], "options": {"group_size": 32}},
            {"stages": [{"kind": "transfer", "setting": "sparse", "method": "wanda",
                         "sparsity": 0.5, "train_on": ["devfam:1"],
                         "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 4}}]}],
        "calibration": calibration, "eval": {"limit": 20, "batch_size": 8},
        "perplexity": {"source": str(text), "seqlen": 64, "n_windows": 2},
        "divergence": {"source": str(text), "seqlen": 64, "n_windows": 2},
        "analysis": {"n_boot": 100}})


@cuda
def test_a_decoder_study_runs_on_the_gpu_like_on_the_cpu(tiny_dir, tmp_path):
    for level in (1, 2):
        register(_devfam(level))
    text = tmp_path / "text.txt"
    text.write_text("Pruning removes weights from a network, and the network forgets. " * 200)
    runs = {}
    for device in ("cpu", "cuda"):
        run_study(_decoder_recipe(tiny_dir, text), tmp_path / device,
                  backend=PrunelabBackend(device), progress=False)
        runs[device] = load_run(tmp_path / device)
    assert runs["cuda"].record["versions"]["device"] == "cuda"
    assert "device" not in runs["cpu"].record["versions"]

    def by_config(run):
        return {(p["method"], str(p["config"]["compression"]), p["task"]): p
                for p in run.points}

    cpu, gpu = by_config(runs["cpu"]), by_config(runs["cuda"])
    assert cpu.keys() == gpu.keys() and len(gpu) == 12
    for key, point in gpu.items():
        # a random tiny model's choices are near ties: a few may flip between devices
        assert abs(point["score"] - cpu[key]["score"]) <= 0.2, key
    compressions = {str(c["config"]): c for c in runs["cuda"].compressions}
    for c in compressions.values():
        if c["config"]["stages"]:
            assert c["perplexity"] > 1 and c["divergence"]["jsd"] > 0
    transfer = [c for c in compressions.values()
                if c["config"]["stages"] and c["config"]["stages"][0].get("kind") == "transfer"]
    assert transfer and transfer[0]["result"]["masked_nonzero"] == 0


@cuda
def test_an_encoder_study_fine_tunes_on_the_gpu(synthetic, tiny_bert, tmp_path):
    run_study(encoder_recipe(tiny_bert), tmp_path, backend=PrunelabBackend("cuda"),
              progress=False)
    run = load_run(tmp_path)
    dense = [p for p in run.points if p["method"] == "dense"]
    assert [p["n"] for p in dense] == [60, 60] and min(p["score"] for p in dense) > 0.7
    assert {(r["task"], r["setting"]) for r in run.analysis.transfer} == {
        (f"finetune-synth:{p}", s) for p in (100, 50) for s in ("sparse", "freeze")}


# Each registered method on the GPU against the same method on the CPU, on one tiny model:
# options, and whether its masks must agree (deterministic scores; a learned or random
# allocation may differ, but not its sparsity).
METHODS = [
    ("magnitude", {}, True), ("magnitude-global", {}, True), ("magnitude-band", {}, True),
    ("wanda", {}, True), ("wanda-variant", {}, True), ("sparsegpt", {}, True),
    ("owl", {}, True), ("dsnot", {}, True), ("gblm", {}, True), ("random", {}, False),
    ("besa", {"epochs": 1}, False), ("sparsegpt", {"bits": 4, "group_size": 32}, True),
    ("rtn", {"bits": 4, "group_size": 32}, None), ("gptq", {"bits": 4, "group_size": 32}, None),
    ("flap", {}, None), ("wanda-sp", {}, None), ("magnitude-sp", {}, None),
    ("seap", {"keep_first": 0, "keep_last": 0}, None)]


@cuda
@pytest.mark.parametrize("method,options,same_masks", METHODS,
                         ids=[f"{m}{'-q' if 'bits' in o else ''}" for m, o, _ in METHODS])
def test_every_method_prunes_on_the_gpu_as_on_the_cpu(tmp_path, method, options, same_masks):
    from prunelab.api import perplexity, prune
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.testing import tiny_loaded

    text = tmp_path / "text.txt"
    text.write_text("Pruning removes weights from a network, and the network forgets. " * 200)
    calibration = CalibrationConfig(str(text), 8, 64, 0)
    quantize = method in ("rtn", "gptq")
    sparsity = 0.3 if method in ("flap", "wanda-sp", "magnitude-sp", "seap") else 0.5
    results, ppl, weights = {}, {}, {}
    for where, device in (("cpu", "cpu"), ("gpu", GPU)):
        loaded = tiny_loaded("llama")
        loaded.model.to(device)
        results[where] = prune(loaded, method, None if quantize else sparsity,
                                calibration=calibration, seed=0, progress=False,
                                keep_masks=True, **options)
        ppl[where] = perplexity(loaded, str(text), 64, 4)
        weights[where] = {k: v.float().cpu() for k, v in loaded.model.state_dict().items()}
        assert next(loaded.model.parameters()).device.type == device
    cpu, gpu = results["cpu"], results["gpu"]
    assert gpu.overall_sparsity == pytest.approx(cpu.overall_sparsity, abs=2e-3)
    assert ppl["gpu"] == pytest.approx(ppl["cpu"], rel=0.1)
    assert weights["gpu"].keys() == weights["cpu"].keys()
    assert all(weights["gpu"][k].shape == weights["cpu"][k].shape for k in weights["cpu"])
    if same_masks:
        agree = [(cpu.masks[k] == gpu.masks[k].cpu()).float().mean().item() for k in cpu.masks]
        assert min(agree) >= 0.97, (method, min(agree))
    if quantize:
        for k, w in weights["cpu"].items():
            scale = w.abs().max().clamp_min(1e-8)
            assert (weights["gpu"][k] - w).abs().max() / scale < 0.2, k


@cuda
def test_divergence_compares_a_dense_model_on_the_cpu_with_a_compressed_one_on_the_gpu():
    from prunelab.evaluate.divergence import windows_divergence
    from prunelab.testing import tiny_loaded

    dense, other = tiny_loaded("llama", seed=0).model, tiny_loaded("llama", seed=1).model
    windows = torch.randint(4, 260, (3, 16))
    both_here = windows_divergence(dense, other, windows, batch_size=2)
    split = windows_divergence(dense, other.to(GPU), windows, batch_size=2)
    assert split.tokens == both_here.tokens
    assert split.jsd == pytest.approx(both_here.jsd, rel=1e-4)
    assert split.perplexity_compressed == pytest.approx(both_here.perplexity_compressed, rel=1e-4)


# -- precisions on the GPU: the model in host memory, one block at a time on the device -------

def _text(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Pruning removes weights from a network, and the network forgets. " * 200)
    return text


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method,options", [("wanda", {}), ("sparsegpt", {}),
                                            ("gptq", {"bits": 4, "group_size": 32})],
                         ids=["wanda", "sparsegpt", "gptq"])
def test_a_low_precision_model_prunes_block_by_block_on_the_gpu(monkeypatch, tmp_path, dtype,
                                                               method, options):
    """What bench/bench_gpu.py times: statistics on the GPU in fp32, the weights written back
    in the model's dtype into host memory, masks as on the CPU in fp32."""
    from prunelab import engine
    from prunelab.api import perplexity, prune
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.testing import tiny_loaded

    text = _text(tmp_path)
    calibration = CalibrationConfig(str(text), 8, 64, 0)
    seen = set()
    real = engine._collect

    def spy(*args, **kwargs):
        stats = real(*args, **kwargs)
        for layer in stats.values():
            for value in layer.values():
                for part in (list(value) if isinstance(value, tuple) else [value]):
                    if isinstance(part, torch.Tensor):
                        seen.add((part.device.type, part.dtype))
        return stats

    monkeypatch.setattr(engine, "_collect", spy)
    quantize = method == "gptq"
    runs, ppl = {}, {}
    for where, device, precision in (("cpu", None, torch.float32), ("gpu", GPU, dtype)):
        loaded = tiny_loaded("llama")
        loaded.model.to(precision)
        runs[where] = prune(loaded, method, None if quantize else 0.5, calibration=calibration,
                            device=device, progress=False, keep_masks=True, **options)
        assert {(p.device.type, p.dtype) for p in loaded.model.parameters()} == {
            ("cpu", precision)}
        ppl[where] = perplexity(loaded, str(text), 64, 4)
    assert ("cuda", torch.float32) in seen and not {d for d in seen if d[1] != torch.float32}
    assert ppl["gpu"] == pytest.approx(ppl["cpu"], rel=0.1)
    if not quantize:
        cpu, gpu = runs["cpu"].masks, runs["gpu"].masks
        agree = torch.cat([(cpu[k] == gpu[k]).flatten() for k in cpu]).float().mean().item()
        assert agree >= 0.95, agree


@cuda
def test_the_cli_prunes_on_the_gpu_in_bf16_and_saves_bf16(tiny_dir, tmp_path):
    import json

    from tests.cli_helpers import run

    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16 arithmetic")
    out = tmp_path / "pruned"
    result = run("prune", str(tiny_dir), "--out", str(out), "--sparsity", "0.5",
                 "--calib-source", str(_text(tmp_path)), "--calib-samples", "4", "--seqlen",
                 "64", "--no-ppl", "--dtype", "bf16", "--device", "cuda")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "prunelab.json").read_text())["model"]["dtype"] == "bf16"
    result = run("ppl", str(out), "--source", str(_text(tmp_path)), "--seqlen", "64",
                 "--windows", "2", "--dtype", "bf16", "--device", "cuda")
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_gpu_bench_says_in_one_line_that_there_is_no_gpu():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).parent.parent / "bench" / "bench_gpu.py"
    done = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [done.stdout.strip()]
    assert done.stdout.startswith("no GPU here")
