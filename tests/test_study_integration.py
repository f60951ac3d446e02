"""The real backend end to end on a tiny random model: prune, evaluate a local task, report."""

import json
from pathlib import Path

import pytest

from prunelab.report import build_report
from prunelab.study.backend import PrunelabBackend
from prunelab.study.plan import describe_compression
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.store import Store


class TinyBackend(PrunelabBackend):
    """Everything real except the model: a tiny random Llama instead of a zoo download."""

    def check(self, recipe):
        return [p for p in super().check(recipe) if not p[0].startswith("models")]

    def load(self, model):
        from prunelab.study.backend import _Handle
        from prunelab.testing import tiny_loaded

        return _Handle(tiny_loaded("llama"))


@pytest.fixture
def task_file(tmp_path):
    levels = []
    for n in (2, 3, 4):
        rows = [{"id": f"q{i}", "input": f"{i} + {n} =", "choices": [str(i + n), str(i + n + 1),
                                                                     "banana"][: n],
                 "answer": 0} for i in range(12)]
        (tmp_path / f"l{n}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        levels.append({"level": n, "data": f"l{n}.jsonl"})
    spec = {"name": "toy", "kind": "mc", "family": "toy", "axis": "options", "levels": levels}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(spec))
    return path


def test_real_backend_on_tiny_model(tmp_path, task_file):
    recipe = parse_recipe({
        "name": "tiny", "models": ["tiny-llama"], "tasks": [str(task_file)],
        "compressions": [{"method": "magnitude", "sparsity": [0.5]},
                         {"method": "wanda", "sparsity": [0.5], "patterns": ["2:4"]}],
        "band_probe": {"starts": [0.0], "width": 0.2},
        "calibration": {"source": str(_text(tmp_path)), "n_samples": 2, "seqlen": 16},
        "eval": {"limit": 10, "batch_size": 4}, "analysis": {"n_boot": 50}})
    out = run_study(recipe, tmp_path / "run", backend=TinyBackend(), progress=False)
    assert out.points_run == 5 * 3
    with Store.in_dir(tmp_path / "run") as store:
        comps = {describe_compression(c["config"]): c for c in store.compressions()}
        assert comps["wanda 2:4"]["result"]["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert comps["magnitude-band 20% band_low=0"]["result"]["overall_sparsity"] == \
            pytest.approx(0.2, abs=0.01)
        assert comps["dense"]["result"] is None
        points = store.points()
        assert all(p["n"] == 10 for p in points)
        records = store.example_records(points[0]["key"])
        assert {"prediction", "target", "correct", "margin"} <= set(records[0])
    assert build_report(tmp_path / "run")["html"].is_file()


def _text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return path


def _tiny_recipe(tmp_path, task_file, **changes):
    return parse_recipe({
        "name": "tiny", "models": ["tiny-llama"], "tasks": [str(task_file)],
        "compressions": [{"method": "wanda", "sparsity": [0.5]}],
        "calibration": {"source": str(_text(tmp_path)), "n_samples": 2, "seqlen": 16},
        "eval": {"limit": 6, "batch_size": 4}, "analysis": {"n_boot": 50}, **changes})


def test_edited_local_files_are_new_points(tmp_path, task_file):
    run_dir = tmp_path / "run"
    recipe = _tiny_recipe(tmp_path, task_file)
    first = run_study(recipe, run_dir, backend=TinyBackend(), progress=False)
    assert first.points_run == 2 * 3
    again = run_study(recipe, run_dir, backend=TinyBackend(), progress=False)
    assert again.points_run == 0
    # An edited task level (same file name): its points are stale, the other levels are not.
    level = tmp_path / "l3.jsonl"
    level.write_text(level.read_text().replace("banana", "apple"))
    edited = run_study(recipe, run_dir, backend=TinyBackend(), progress=False)
    assert edited.points_run == 2  # level 3, dense and pruned
    # An edited calibration file changes every pruned point that drew from it.
    calib = tmp_path / "calib.txt"
    calib.write_text("Pack my box with five dozen liquor jugs. " * 40)
    recalibrated = run_study(recipe, run_dir, backend=TinyBackend(), progress=False)
    assert recalibrated.points_run == 3  # wanda on every level; dense is unchanged


def test_calibration_size_sweep_and_a_chain_run_end_to_end(tmp_path, task_file):
    from prunelab.study.recipe import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name, points in (("calibration-samples.yaml", (1 + 2 * 2) * 3),
                         ("chain.yaml", (1 + 2 + 2) * 3)):
        recipe = load_recipe(root / name, overrides=[
            "models=[tiny-llama]", f"tasks=[{task_file}]", "eval.limit=6", "seeds=[0]",
            f"calibration.source={_text(tmp_path)}", "calibration.seqlen=16"])
        out = run_study(recipe, tmp_path / name, backend=TinyBackend(), progress=False)
        assert out.points_run == out.points_total == points, name
        paths = build_report(tmp_path / name)
        assert "Verdicts" in paths["md"].read_text()
        with Store.in_dir(tmp_path / name) as store:
            arms = {p["arm"] for p in store.points() if p["method"] != "dense"}
            sparsities = [c["result"]["overall_sparsity"] for c in store.compressions()
                          if c["result"]]
        if name == "chain.yaml":
            assert arms == {"wanda 50% → magnitude", "magnitude"}
            # the second stage prunes the already pruned matrices to its own sparsity
            assert sorted(round(s, 2) for s in sparsities) == [0.6, 0.6, 0.7, 0.7]
        else:
            assert arms == {"wanda calibration.n_samples=16", "wanda calibration.n_samples=64"}


def test_reset_restores_a_model_whose_structure_changed():
    import torch

    from prunelab.study.backend import _Handle
    from prunelab.testing import tiny_loaded

    handle = _Handle(tiny_loaded("llama"))
    model = handle.loaded.model
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids).logits
    # Structured surgery: half the MLP channels of block 0 go, and the config says so.
    mlp = model.model.layers[0].mlp
    keep = mlp.gate_proj.out_features // 2
    for name, shape in (("gate_proj", (keep, 64)), ("up_proj", (keep, 64)),
                        ("down_proj", (64, keep))):
        setattr(mlp, name, torch.nn.Linear(shape[1], shape[0], bias=False))
    model.config.intermediate_size = keep
    handle.dirty = True
    handle.reset()
    restored = handle.loaded.model
    assert restored.model.layers[0].mlp.gate_proj.out_features == 2 * keep
    assert restored.config.intermediate_size == 2 * keep
    with torch.no_grad():
        assert torch.equal(restored(ids).logits, before)
    # An unstructured change is undone in place (no new model object).
    with torch.no_grad():
        restored.model.layers[1].mlp.down_proj.weight.zero_()
    handle.dirty = True
    handle.reset()
    assert handle.loaded.model is restored
    with torch.no_grad():
        assert torch.equal(restored(ids).logits, before)


def test_the_continuous_item_measure_scores_the_gold_choice_probability(tmp_path, task_file):
    from prunelab.study.results import load_run

    recipe = _tiny_recipe(tmp_path, task_file, analysis={"n_boot": 50,
                                                         "item_measure": "continuous"})
    run_study(recipe, tmp_path / "run", backend=TinyBackend(), progress=False)
    run = load_run(tmp_path / "run")
    try:
        dense = {d["task"]: d for d in run.analysis.dense}
        accuracy = {p["task"]: p["score"] for p in run.points if p["method"] == "dense"}
        for task, row in dense.items():
            # a probability over the choices, not the 0/1 accuracy of the same items
            assert 0 < row["score"] < 1 and row["score"] != accuracy[task]
        assert "probability of the gold choice" in build_report(tmp_path / "run")["md"].read_text()
    finally:
        run.store.close()


def test_transfer_stages_run_for_real_and_report_percent_of_dense_transfer(tmp_path, task_file):
    train = {"lr": 1e-3, "epochs": 1, "batch_size": 2, "max_steps": 3}
    stage = {"kind": "transfer", "train_on": ["toy:2"], "train": train}
    recipe = parse_recipe({
        "name": "transfer", "models": ["tiny-llama"], "tasks": [str(task_file)],
        "compressions": [
            {"stages": [{**stage, "setting": "dense"}]},
            {"stages": [{**stage, "setting": "sparse", "method": "magnitude", "sparsity": 0.5}]},
            {"stages": [{**stage, "setting": "freeze", "method": "magnitude", "sparsity": 0.5}]}],
        "seeds": [41], "eval": {"limit": 6, "batch_size": 4}, "analysis": {"n_boot": 50}})
    out = run_study(recipe, tmp_path / "run", backend=TinyBackend(), progress=False)
    assert out.points_run == 4 * 3
    with Store.in_dir(tmp_path / "run") as store:
        results = {c["config"]["stages"][0]["setting"]: c["result"]
                   for c in store.compressions() if c["config"]["stages"]}
        # the study's own evaluation settings decide the training split: 12 items - 6 tested
        assert {r["train_examples"] for r in results.values()} == {6}
        assert all(r["steps"] == 3 for r in results.values())
        assert results["sparse"]["masked_weights"] > 0 and results["sparse"]["masked_nonzero"] == 0
        assert results["freeze"]["masked_nonzero"] > 0  # nothing zeroed, small weights kept
        stages = store.compressions()[-1]["config"]["stages"][0]
        assert stages["holdout_limit"] == 6 and stages["holdout_seed"] == 0
    report = build_report(tmp_path / "run")["md"].read_text()
    assert "Can fine-tuning bring it back?" in report and "% of Dense Transfer" in report
