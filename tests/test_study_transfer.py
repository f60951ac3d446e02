"""Transfer arms in a study (fake backend): planning, % of Dense Transfer, irreversibility."""

import pytest

from prunelab.study.recipe import parse_recipe
from prunelab.study.results import load_run
from prunelab.study.runner import dry_run, run_study
from prunelab.study.testing import FakeBackend


def _recipe(**changes):
    stage = {"kind": "transfer", "train_on": ["digits:1"]}
    return parse_recipe({
        "name": "t", "models": ["m"], "tasks": ["digits"], "seeds": [41, 42],
        "compressions": [
            {"stages": [{**stage, "setting": "dense"}]},
            *[{"stages": [{**stage, "setting": s, "method": "wanda"}],
               "sweep": {"stages[0].sparsity": [0.5, 0.7]}}
              for s in ("sparse", "sparse-to-dense", "freeze")]],
        "eval": {"limit": 150}, "analysis": {"n_boot": 200}, **changes})


def test_transfer_points_repeat_per_seed_and_hold_out_the_evaluated_items():
    plan = dry_run(_recipe(), FakeBackend(size=300))
    labels = [u["compression"] for u in plan["units"]]
    assert "dense transfer 0% on digits:1 seed 41" in labels
    assert "freeze transfer wanda 70% on digits:1 seed 42" in labels
    assert len(labels) == 1 + 2 * (1 + 3 * 2)  # dense, then every transfer point per seed


def test_percent_of_dense_transfer_and_irreversibility(tmp_path):
    run_study(_recipe(), tmp_path, backend=FakeBackend(size=300), progress=False)
    analysis = load_run(tmp_path).analysis
    share = {(r["task"], r["setting"], r["x"]): r for r in analysis.transfer}
    # the fake's freeze keeps what dense transfer has; sparse loses more at harder levels
    assert share[("digits:1", "freeze", 0.5)]["of_dense_transfer"] == pytest.approx(1.0)
    sparse = [share[(f"digits:{d}", "sparse", 0.7)]["of_dense_transfer"] for d in (1, 2, 3, 4)]
    assert sparse == sorted(sparse, reverse=True) and sparse[-1] < 0.5
    low, high = share[("digits:4", "sparse", 0.7)]["ci"]
    assert low < sparse[-1] < high
    recovery = {(r["task"], r["x"]): r for r in analysis.recovery}
    hard = recovery[("digits:2", 0.5)]
    assert 0 < hard["gap_closed"] < 1 and hard["freeze_keeps"] == pytest.approx(1.0)
    # dense transfer is the reference, not an arm with a verdict of its own
    assert {v["arm"].split()[0] for v in analysis.verdicts} == {"sparse", "sparse-to-dense",
                                                                 "freeze"}


def test_the_share_of_parameters_trained_stands_beside_each_transfer_result(tmp_path):
    from prunelab.report import build_report

    stage = {"kind": "transfer", "train_on": ["digits:1"], "method": "wanda"}
    recipe = _recipe(compressions=[
        {"stages": [{**stage, "setting": "dense", "method": None}]},
        {"stages": [{**stage, "setting": "sparse"}], "sweep": {"stages[0].sparsity": [0.5]}},
        {"stages": [{**stage, "setting": "sparse", "trainable": ["biases", "norms"]}],
         "sweep": {"stages[0].sparsity": [0.5]}}])
    run_study(recipe, tmp_path, backend=FakeBackend(size=300), progress=False)
    md = build_report(tmp_path)["md"].read_text()
    assert "| parameters trained |" in md
    rows = [line for line in md.splitlines() if line.startswith("| m | digits:1 | sparse |")]
    assert len(rows) == 2
    assert {row.split(" | ")[5] for row in rows} == {"100%", "0.42%"}


def test_a_transfer_stage_without_a_mask_source_is_refused():
    from prunelab.errors import PrunelabError

    with pytest.raises(PrunelabError, match="needs a pruning method"):
        parse_recipe({"name": "t", "models": ["m"], "tasks": ["digits"], "compressions": [
            {"stages": [{"kind": "transfer", "setting": "sparse", "sparsity": 0.5,
                         "train_on": ["digits:1"]}]}]})


def test_a_killed_study_resumes_fine_tuning_from_a_checkpoint_of_its_own(tmp_path, monkeypatch):
    from prunelab.study.stages import parse_stage

    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    stage = parse_stage({"kind": "transfer", "setting": "sparse", "method": "wanda",
                         "sparsity": 0.5, "train_on": ["digits:1"]})
    calibration = {"source": "x", "n_samples": 2, "seqlen": 16}
    path = stage.checkpoint_path("m", calibration, 41)
    assert path.parent == tmp_path / "checkpoints"
    assert path == stage.checkpoint_path("m", calibration, 41)  # found again after a kill
    others = {stage.checkpoint_path("m", calibration, 42), stage.checkpoint_path("n", calibration,
                                                                                 41),
              parse_stage({**stage.model_dump(), "sparsity": 0.7}).checkpoint_path(
                  "m", calibration, 41)}
    assert path not in others and len(others) == 3


def test_the_dry_run_estimate_counts_fine_tuning_steps():
    from prunelab.study.estimate import rough_estimate
    from prunelab.study.plan import CompressionPoint
    from prunelab.study.stages import TransferStage

    recipe = parse_recipe({"name": "t", "models": ["smollm2-135m"], "tasks": ["synth_arithmetic:1"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.5]}]})

    def seconds(**fields):
        stage = TransferStage(setting="dense", train_on=["synth_arithmetic:1"], **fields)
        point = CompressionPoint(stages=(stage,), calibration=(None,), seed=41)
        return rough_estimate(recipe, "smollm2-135m", point, [])[0]

    ten, twenty = seconds(train={"max_steps": 10}), seconds(train={"max_steps": 20})
    assert twenty - ten > 0.5 * ten  # the training steps dominate a transfer point
    # without max_steps: epochs over the items, ceil(80 / 16) = 5 steps an epoch, 3 epochs
    assert seconds(max_items=80) == pytest.approx(seconds(train={"max_steps": 15}))


def test_the_dry_run_estimate_tells_the_pruners_apart():
    from prunelab.study.estimate import rough_estimate
    from prunelab.study.plan import CompressionPoint
    from prunelab.study.stages import PruneStage

    recipe = parse_recipe({"name": "t", "models": ["smollm2-135m"], "tasks": ["synth_arithmetic:1"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.5]}]})
    calibration = {"n_samples": 32, "seqlen": 256}

    def seconds(method, **options):
        stage = PruneStage(method=method, sparsity=0.5, options=options)
        point = CompressionPoint(stages=(stage,), calibration=(calibration,), seed=0)
        return rough_estimate(recipe, "smollm2-135m", point, [])[0]

    wanda, sparsegpt = seconds("wanda"), seconds("sparsegpt")
    assert wanda < seconds("dsnot") < seconds("owl") < seconds("gblm") < seconds("besa")
    # a wrapper costs its own pass plus its base's
    assert seconds("owl", base="sparsegpt") - seconds("owl") == pytest.approx(sparsegpt - wanda)
