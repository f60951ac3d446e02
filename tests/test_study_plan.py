"""What a study point is: a chain of stages, its arm and x, and a key that covers every input."""

import json
import pickle

import pytest

from prunelab.errors import PrunelabError
from prunelab.study.plan import compressions
from prunelab.study.recipe import parse_recipe
from prunelab.study.results import load_run
from prunelab.study.runner import LocalExecutor, prepare, run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend

BASE = {"name": "p", "models": ["m"], "tasks": ["digits"], "eval": {"limit": 20},
        "analysis": {"n_boot": 60}}


def _fake_uses_calibration(stage):
    return stage.method in ("wanda", "sparsegpt")


def test_variants_of_one_method_at_one_sparsity_are_separate_arms(tmp_path):
    # Two percdamp values and two calibration sources of SparseGPT at the same sparsity once
    # shared the arm "sparsegpt" and overwrote each other in the statistics.
    recipe = parse_recipe({**BASE, "compressions": [
        {"method": "sparsegpt", "sparsity": [0.5], "options": {"percdamp": 0.01}},
        {"method": "sparsegpt", "sparsity": [0.5], "options": {"percdamp": 0.1}},
        {"method": "sparsegpt", "sparsity": [0.5], "calibration": {"source": "python-ref-b"}},
    ]})
    run_study(recipe, tmp_path, backend=FakeBackend(), progress=False)
    run = load_run(tmp_path)
    try:
        arms = {r["arm"] for r in run.analysis.relative}
        assert arms == {"sparsegpt percdamp=0.01", "sparsegpt percdamp=0.1",
                        "sparsegpt calibration.source=python-ref-b"}
        for arm in arms:  # each arm holds its own four levels at x = 0.5
            assert sum(r["arm"] == arm for r in run.analysis.relative) == 4
    finally:
        run.store.close()


def test_any_stage_field_can_be_swept_without_code():
    recipe = parse_recipe({**BASE, "seeds": [0, 1], "compressions": [
        {"method": "wanda", "sparsity": [0.5, 0.7],
         "sweep": {"calibration.n_samples": [8, 32]}},
        {"method": "wanda", "sparsity": [0.5], "sweep": {"calibration.n_samples": [8, 16, 32]},
         "x": "calibration.n_samples"},
    ]})
    points = compressions(recipe, _fake_uses_calibration)
    variants = [p for p in points if p.x_field == "stages[0].sparsity"]
    assert {p.arm for p in variants} == {"wanda calibration.n_samples=8",
                                         "wanda calibration.n_samples=32"}
    assert len(variants) == 2 * 2 * 2  # samples x sparsities x seeds
    along = [p for p in points if p.x_field == "stages[0].calibration.n_samples"]
    assert {p.arm for p in along} == {"wanda 50%"} and sorted({p.x for p in along}) == [8, 16, 32]
    assert not along[0].x_is_amount and variants[0].x_is_amount
    assert {p.calibration[0]["n_samples"] for p in along} == {8, 16, 32}


def test_a_chain_of_stages_is_one_point_with_its_x():
    recipe = parse_recipe({**BASE, "compressions": [{
        "stages": [{"kind": "prune", "method": "wanda", "sparsity": 0.5},
                   {"kind": "prune", "method": "magnitude"}],
        "sweep": {"stages[1].sparsity": [0.6, 0.7]}}]})
    points = compressions(recipe, _fake_uses_calibration)
    assert [p.label for p in points] == ["wanda 50% → magnitude 60% seed 0",
                                         "wanda 50% → magnitude 70% seed 0"]
    assert {p.arm for p in points} == {"wanda 50% → magnitude"}
    assert [p.x for p in points] == [0.6, 0.7]
    assert points[0].calibration[1] is None  # magnitude draws no calibration data


def test_every_deciding_field_is_in_the_key(tmp_path):
    def keys(**changes):
        recipe = parse_recipe({**BASE, "compressions": [
            {"method": "sparsegpt", "sparsity": [0.5], **changes}]})
        study = prepare(recipe, FakeBackend())
        return {k for u in study.units if not u.compression.is_dense for k in u.keys.values()}

    base = keys()
    assert keys(options={"percdamp": 0.1}) != base
    assert keys(calibration={"n_samples": 16}) != base
    assert keys(calibration={"seqlen": 128}) != base
    assert keys() == base


def test_bad_stages_and_sweeps_fail_before_any_work(tmp_path):
    with pytest.raises(PrunelabError) as err:
        parse_recipe({**BASE, "compressions": [
            {"stages": [{"kind": "prune", "method": "wanda", "sparsity": 1.5},
                        {"kind": "distil"}]}]})
    assert "stages[0].sparsity" in str(err.value)
    assert "unknown stage kind 'distil'" in str(err.value)
    backend = FakeBackend()
    recipe = parse_recipe({**BASE, "compressions": [
        {"method": "wanda", "sparsity": [0.5], "sweep": {"stages[3].sparsity": [0.5]}},
        {"method": "wanda", "sparsity": [0.5], "sweep": {"calibration.source": ["a", "b"]},
         "x": "calibration.source"}]})
    with pytest.raises(PrunelabError) as err:
        run_study(recipe, tmp_path / "run", backend=backend, progress=False)
    assert "compressions[0]: stages[3].sparsity: the chain has only 1 stage" in str(err.value)
    assert "compressions[1]: x = stages[0].calibration.source is 'a'" in str(err.value)
    assert backend.calls == [] and not (tmp_path / "run").exists()


class PicklingExecutor:
    """Ships every unit of work through pickle to a worker of its own, as a distributed
    executor would, and hands results back out of order."""

    def __init__(self):
        self.shipped = 0

    def map(self, make_worker, items):
        worker = make_worker()
        results = []
        for item in items:
            shipped = pickle.loads(pickle.dumps(item))
            self.shipped += 1
            results.append(pickle.loads(pickle.dumps(worker(shipped))))
        return reversed(results)


def test_an_executor_gets_plain_work_and_the_driver_alone_writes(tmp_path):
    recipe = parse_recipe({**BASE, "compressions": [{"method": "wanda", "sparsity": [0.5]}]})
    executor = PicklingExecutor()
    out = run_study(recipe, tmp_path / "a", backend=FakeBackend(), executor=executor,
                    progress=False)
    assert executor.shipped == out.points_run == 8
    run_study(recipe, tmp_path / "b", backend=FakeBackend(), executor=LocalExecutor(),
              progress=False)
    with Store.in_dir(tmp_path / "a") as a, Store.in_dir(tmp_path / "b") as b:
        assert sorted((p["key"], p["score"]) for p in a.points()) == \
            sorted((p["key"], p["score"]) for p in b.points())
        assert len(a.compressions()) == len(b.compressions()) == 2


def test_a_store_of_the_old_schema_is_refused(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.execute("CREATE TABLE points (key TEXT PRIMARY KEY, band INTEGER)")
    conn.close()
    with pytest.raises(PrunelabError, match="older prunelab"):
        Store.in_dir(tmp_path)


def test_stored_points_carry_arm_x_and_stages(tmp_path):
    recipe = parse_recipe({**BASE, "compressions": [{"method": "wanda", "patterns": ["2:4"]}]})
    run_study(recipe, tmp_path, backend=FakeBackend(), progress=False)
    with Store.in_dir(tmp_path) as store:
        pruned = [p for p in store.points() if p["method"] != "dense"]
        assert {(p["arm"], p["x"], p["x_field"]) for p in pruned} == {
            ("wanda N:4", 0.5, "stages[0].sparsity")}
        assert pruned[0]["stages"][0]["pattern"] == "2:4"
        assert json.dumps(pruned[0]["config"]["compression"], sort_keys=True)
