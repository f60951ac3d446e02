"""lm-evaluation-harness adapter, both ways, on local files and a tiny model only.

Skipped where lm-eval (the optional `lmeval` extra) is not installed.
"""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("lm_eval")

from prunelab.evaluate.lmeval import export_tasks, lmeval_name, run_lmeval  # noqa: E402
from prunelab.evaluate.runner import evaluate  # noqa: E402
from prunelab.tasks.local import load_task_file  # noqa: E402
from prunelab.testing import tiny_loaded  # noqa: E402


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded("llama")


@pytest.fixture()
def spec(tmp_path):
    rows = [{"id": f"q{i}", "input": f"What is {i} plus {i}?",
             "choices": [str(2 * i), str(2 * i + 1), "banana"], "answer": 0} for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "toy.yaml"
    path.write_text("name: toy\nkind: mc\ndata: d.jsonl\nshots: 1\n")
    return path


def test_export_writes_lmeval_yaml_and_data(tmp_path, spec):
    (task,) = load_task_file(spec)
    (config,) = export_tasks([task], tmp_path / "export")
    data = yaml.safe_load(config.read_text())
    assert data["task"] == lmeval_name(task) == "prunelab_toy"
    assert data["output_type"] == "multiple_choice" and data["target_delimiter"] == ""
    rows = [json.loads(line) for line in (config.parent / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    item = task.items[0]
    assert rows[0]["prompt"] == task.prompt(item, 0)
    assert rows[0]["choices"][0] == " 0" and rows[0]["gold"] == 0


def test_lmeval_scores_exported_tasks_like_prunelab(tmp_path, spec, loaded):
    """Both directions at once: lm-eval runs on the in-memory model and on exported tasks,
    and its per-choice log-likelihoods equal prunelab's summed scores."""
    (task,) = load_task_file(spec)
    export_tasks([task], tmp_path / "export")
    out = run_lmeval(loaded, [lmeval_name(task)], include_path=tmp_path / "export",
                     batch_size=4, log_samples=True)
    samples = {s["doc"]["id"]: s for s in out["samples"][lmeval_name(task)]}
    ours = evaluate(loaded, [str(spec)], progress=False, mc_score="sum")
    assert len(samples) == len(ours.examples) == 8
    for ex in ours.examples:
        theirs = [float(r[0][0]) for r in samples[ex.example_id]["resps"]]
        assert ex.choice_scores_sum == pytest.approx(theirs, abs=1e-4)
    acc = out["results"][lmeval_name(task)]["acc,none"]
    assert acc == pytest.approx(sum(e.correct for e in ours.examples) / 8)


def test_rolling_and_generation_exports_run_in_lmeval(tmp_path, loaded):
    texts = ["the quick brown fox", "a b c d e f g", "jumps over the lazy dog"]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "ppl.yaml").write_text("name: ppl\nkind: rolling\ndata: t.jsonl\n")
    (tmp_path / "g.jsonl").write_text("".join(
        json.dumps({"input": f"say {w}", "targets": [w]}) + "\n" for w in ("yes", "no")))
    (tmp_path / "gen.yaml").write_text("name: gen\nkind: generate\ndata: g.jsonl\nmax_new_tokens: 4\n")
    tasks = load_task_file(tmp_path / "ppl.yaml") + load_task_file(tmp_path / "gen.yaml")
    export_tasks(tasks, tmp_path / "export")
    out = run_lmeval(loaded, [lmeval_name(t) for t in tasks], include_path=tmp_path / "export",
                     batch_size=4)
    ours = evaluate(loaded, [str(tmp_path / "ppl.yaml")], progress=False).summary()[0]
    assert out["results"]["prunelab_ppl"]["bits_per_byte,none"] == pytest.approx(ours["score"],
                                                                                 rel=1e-4)
    assert "exact_match,none" in out["results"]["prunelab_gen"]
