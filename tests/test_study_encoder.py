"""The encoder track in a study (real backend, tiny random BERT): each compression only records
its transfer setting, and every `finetune` level is fine-tuned from it when it is evaluated."""

import pytest

from prunelab.recover import encoder
from prunelab.study.backend import PrunelabBackend
from prunelab.study.recipe import parse_recipe
from prunelab.study.results import load_run
from prunelab.study.runner import run_study


def _recipe(model, **changes):
    def arm(setting):
        stage = {"kind": "transfer", "setting": setting}
        if setting == "dense":
            return {"stages": [stage]}
        return {"stages": [{**stage, "method": "magnitude-global"}],
                "sweep": {"stages[0].sparsity": [0.5]}}

    return parse_recipe({
        "name": "enc", "models": [str(model)],
        "compressions": [arm(s) for s in ("dense", "sparse", "freeze")],
        "tasks": ["finetune-synth:100", "finetune-synth:50"], "seeds": [41],
        "eval": {"limit": 60, "finetune": {"lr": 2e-3, "epochs": 2, "batch_size": 16,
                                           "warmup": 0.1}},
        "analysis": {"n_boot": 100}, **changes})


def test_every_level_is_fine_tuned_from_its_compressions_setting(synthetic, tiny_bert, tmp_path,
                                                                 monkeypatch):
    calls = []
    real = encoder.encoder_transfer

    def spy(source, task, setting, **kwargs):
        record = real(source, task, setting, **kwargs)
        calls.append((setting, kwargs["sparsity"], kwargs["train"].seed, record["train_items"],
                      record["masked_nonzero"] if setting == "sparse" else None))
        return record

    monkeypatch.setattr(encoder, "encoder_transfer", spy)
    run_study(_recipe(tiny_bert), tmp_path, backend=PrunelabBackend(), progress=False)
    # the dense model (the paper's seed 42), then each arm at the study seed, per level
    assert sorted(calls) == sorted([
        ("dense", 0.0, 42, 200, None), ("dense", 0.0, 42, 100, None),
        ("dense", 0.0, 41, 200, None), ("dense", 0.0, 41, 100, None),
        ("sparse", 0.5, 41, 200, 0), ("sparse", 0.5, 41, 100, 0),
        ("freeze", 0.5, 41, 200, None), ("freeze", 0.5, 41, 100, None)])
    run = load_run(tmp_path)
    dense = [p for p in run.points if p["method"] == "dense"]
    assert [p["n"] for p in dense] == [60, 60] and min(p["score"] for p in dense) > 0.7
    # each level's fine-tuning is stored with its point: sparse held every pruned weight at 0
    trainings = run.store.trainings()
    assert sorted(trainings) == sorted(p["key"] for p in run.points)
    assert sorted((t["setting"], t["train_items"]) for t in trainings.values()) == sorted(
        (c[0], c[3]) for c in calls)
    sparse = [t for t in trainings.values() if t["setting"] == "sparse"]
    assert sparse and all(t["masked_weights"] > 0 and t["masked_nonzero"] == 0 for t in sparse)
    assert all(t["steps"] > 0 and t["seconds"] >= 0 for t in trainings.values())
    shares = {(r["task"], r["setting"]) for r in run.analysis.transfer}
    assert shares == {(f"finetune-synth:{p}", s) for p in (100, 50) for s in ("sparse", "freeze")}
    from prunelab.report import build_report

    md = build_report(tmp_path)["md"].read_text()
    assert "Can fine-tuning bring it back?" in md and "finetune-synth:50" in md
    assert "8 fine-tunings of task levels" in md and ", 0 of them nonzero at the end." in md


def test_tracks_do_not_mix(synthetic, tiny_bert, tiny_dir):
    backend = PrunelabBackend()
    prompted = _recipe(tiny_bert, tasks=["finetune-synth:100"])
    assert not [p for p in backend.check(prompted) if p[0].startswith(("models", "compr"))]
    assert ("models[0]", f"{tiny_bert} is an encoder: it is scored by fine-tuning on "
            "`finetune` task levels only (e.g. finetune-multiemo-en), not on prompted tasks"
            ) in backend.check(_recipe(tiny_bert, tasks=["synth_arithmetic:1"]))
    causal = backend.check(_recipe(tiny_dir))
    assert any("is a causal LM" in problem for _, problem in causal)
    assert any("needs train_on" in problem for _, problem in causal)
    trained = _recipe(tiny_bert, compressions=[{"stages": [
        {"kind": "transfer", "setting": "dense", "train": {"lr": 1e-3}}]}])
    assert any("leave out train" in problem for _, problem in backend.check(trained))


def test_a_finetune_level_is_not_prompted(synthetic):
    from prunelab.errors import PrunelabError
    from prunelab.evaluate.runner import evaluate
    from prunelab.testing import tiny_loaded

    with pytest.raises(PrunelabError, match="scored by fine-tuning an encoder"):
        evaluate(tiny_loaded("llama"), ["finetune-synth:100"], limit=5, progress=False)


def test_prunelab_eval_refuses_a_finetune_level_before_loading(synthetic):
    from tests.cli_helpers import assert_user_error, run

    assert_user_error(run("eval", "no-such-model", "--tasks", "finetune-synth:100"),
                      "scored by fine-tuning an encoder")
