"""`transfer --mask-from DIR`: a directory that was never pruned is refused before the model
loads (or, when its weights hold no zeros, before training); a pruned one is used and recorded
in the output's prunelab.json (path, method, sparsity, a digest of the mask)."""

import json
import shutil

import pytest

from prunelab.testing import tiny_loaded
from tests.cli_helpers import assert_user_error, run


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_dir):
    """A pruned model (magnitude 50%), a quantized one (rtn 4-bit), a dense one (no
    prunelab.json) and a "pruned" one whose weights were put back dense."""
    from prunelab.api import prune, quantize, save

    root = tmp_path_factory.mktemp("mask_sources")
    pruned = tiny_loaded()
    save(pruned, root / "pruned", prune(pruned, method="magnitude", sparsity=0.5,
                                         progress=False))
    quantized = tiny_loaded()
    save(quantized, root / "quantized", quantize(quantized, method="rtn", bits=4,
                                                 group_size=None, progress=False))
    dense = root / "dense"
    shutil.copytree(tiny_dir, dense)
    refilled = root / "refilled"  # the record of a pruning, the weights of a dense model
    shutil.copytree(tiny_dir, refilled)
    shutil.copy(root / "pruned" / "prunelab.json", refilled / "prunelab.json")
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("prunelab.zoo.models.load_model", refuse)


def _transfer(tmp_path, model, mask_from, *extra):
    text = tmp_path / "t.txt"
    text.write_text("A pruned model keeps its zeros while it trains. " * 1600)  # 256 windows
    return run("transfer", str(model), "--out", str(tmp_path / "out"), "--setting", "sparse",
               "--train-on", f"text:{text}", "--mask-from", str(mask_from),
               "--max-steps", "1", "--batch-size", "2", *extra)


@pytest.mark.parametrize("source, words", [
    ("dense", "has no prunelab.json: it is not a model prunelab pruned"),
    ("quantized", "was quantized (rtn), not pruned"),
    ("missing", "is not a directory"),
])
def test_a_source_that_was_never_pruned_is_refused_before_the_model_loads(
        tmp_path, tiny_dir, sources, no_model_load, source, words):
    result = _transfer(tmp_path, tiny_dir, sources / source)
    assert_user_error(result, words)
    assert "prunelab prune --out" in result.stderr
    assert not (tmp_path / "out").exists()


def test_weights_without_zeros_are_refused_before_training(tmp_path, tiny_dir, sources,
                                                            monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("prunelab.recover.run.fine_tune", no_training)
    result = _transfer(tmp_path, tiny_dir, sources / "refilled")
    assert_user_error(result, "its prunable weights hold no zeros")
    assert not (tmp_path / "out").exists()


def test_a_pruned_source_is_kept_and_recorded(tmp_path, tiny_dir, sources):
    import torch
    from safetensors.torch import load_file

    from prunelab.recover.mask_source import mask_digest

    result = _transfer(tmp_path, tiny_dir, sources / "pruned")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "prunelab.json").read_text())["transfer"]
    source = record["mask_source"]
    assert source["path"] == str((sources / "pruned").resolve())
    assert (source["method"], source["sparsity"]) == ("magnitude", 0.5)
    assert source["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert source["masked_weights"] == record["masked_weights"] > 0
    assert record["masked_nonzero"] == 0
    # the digest is that of the zeros the source holds, and the output holds them still
    before = load_file(sources / "pruned" / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    masks = {key.removesuffix(".weight"): before[key] == 0 for key in before
             if key.startswith("model.layers.") and key.endswith("_proj.weight")}
    assert source["digest"] == mask_digest(masks)
    assert all(torch.all(after[f"{name}.weight"][mask] == 0) for name, mask in masks.items())


def test_the_digest_tells_masks_apart():
    import torch

    from prunelab.recover.mask_source import mask_digest

    mask = torch.tensor([[True, False], [False, True]])
    assert mask_digest({"a": mask}) == mask_digest({"a": mask.clone()})
    assert mask_digest({"a": mask}) != mask_digest({"a": ~mask})
    assert mask_digest({"a": mask}) != mask_digest({"b": mask})
    assert mask_digest({"a": mask}) != mask_digest({"a": mask.reshape(1, 4)})
