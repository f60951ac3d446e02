"""bench/compare_runs.py: two runs of one recipe compare identical; a changed score is found."""

import sqlite3

from bench_helpers import bench_module
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.testing import FakeBackend



def _compare_runs():
    return bench_module("compare_runs")


def test_compare_runs_finds_a_changed_score(tmp_path, capsys):
    recipe = parse_recipe({"name": "c", "models": ["m"], "tasks": ["digits"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.5]}],
                           "perplexity": {}, "divergence": {}, "eval": {"limit": 10}})
    for name in ("a", "b"):
        run_study(recipe, tmp_path / name, backend=FakeBackend(), progress=False)
    compare_runs = _compare_runs()
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "identical" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "b" / "results.sqlite") as conn:
        conn.execute("UPDATE points SET score = score + 0.01 WHERE task = 'digits:2'")
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "score" in out and "2 differences" in out  # dense and pruned
    assert compare_runs.main([str(tmp_path / "a")]) == 2
