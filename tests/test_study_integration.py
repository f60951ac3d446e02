"""The real backend end to end on a tiny random model: prune, evaluate a local task, report."""

import json

import pytest

from prunelab.report import build_report
from prunelab.study.backend import PrunelabBackend
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
        comps = {c["config"]["method"] + str(c["config"]["pattern"]): c
                 for c in store.compressions()}
        assert comps["wanda2:4"]["result"]["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert comps["magnitude-bandNone"]["result"]["overall_sparsity"] == pytest.approx(0.2, abs=0.01)
        assert comps["denseNone"]["result"] is None
        points = store.points()
        assert all(p["n"] == 10 for p in points)
        records = store.example_records(points[0]["key"])
        assert {"prediction", "target", "correct", "margin"} <= set(records[0])
    assert build_report(tmp_path / "run")["html"].is_file()


def _text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return path
