"""The study runner on a fake backend: ordering, resumption, run-directory ownership, kill -9."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from prunelab.errors import PrunelabError
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import dry_run, run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend

RECIPE = {"name": "fake", "models": ["smollm2-135m"], "tasks": ["digits", "objects"],
          "seeds": [0, 1],
          "compressions": [{"method": "magnitude", "sparsity": [0.5, 0.3]},
                           {"method": "wanda", "sparsity": [0.5], "patterns": ["2:4"]}],
          "eval": {"limit": 20}, "analysis": {"n_boot": 100}}


def recipe(**changes):
    return parse_recipe({**RECIPE, **changes})


def test_each_compression_built_once_dense_first(tmp_path):
    backend = FakeBackend()
    out = run_study(recipe(), tmp_path / "run", backend=backend, progress=False)
    compress = [c[2] for c in backend.calls if c[0] == "compress"]
    # magnitude draws no calibration data: once, not once per seed; wanda once per seed.
    assert compress == ["magnitude 30%", "magnitude 50%", "wanda 50% seed 0", "wanda 50% seed 1",
                        "wanda 2:4 seed 0", "wanda 2:4 seed 1"]
    evals = [c for c in backend.calls if c[0] == "evaluate"]
    assert len(evals) == 7 * 7 == out.points_run == out.points_total  # (dense + 6) x 7 levels
    first_compress = backend.calls.index(next(c for c in backend.calls if c[0] == "compress"))
    assert all(c[0] == "evaluate" for c in backend.calls[1:first_compress])  # dense first
    assert [c[0] for c in backend.calls].count("load") == 1


def test_rerun_skips_finished_points(tmp_path):
    run_study(recipe(), tmp_path / "run", backend=FakeBackend(), progress=False)
    again = FakeBackend()
    out = run_study(recipe(), tmp_path / "run", backend=again, progress=False)
    assert out.points_run == 0 and out.points_done_before == 49
    assert again.calls == []  # no model loaded, nothing compressed


def test_new_versions_recompute(tmp_path):
    run_study(recipe(), tmp_path / "run", backend=FakeBackend(), progress=False)
    newer = FakeBackend(versions={"prunelab": "test", "fake": "2"})
    out = run_study(recipe(), tmp_path / "run", backend=newer, progress=False)
    assert out.points_run == 49
    with Store.in_dir(tmp_path / "run") as store:
        assert len(store.points()) == 98  # both kept, keyed apart
        assert len(store.points(set(json.loads((tmp_path / "run/run.json").read_text())
                                    ["grid_ids"]))) == 49


class Crash(Exception):
    pass


class CrashingBackend(FakeBackend):
    def __init__(self, after):
        super().__init__()
        self.after = after

    def evaluate(self, *args, **kwargs):
        if sum(c[0] == "evaluate" for c in self.calls) >= self.after:
            raise Crash()
        return super().evaluate(*args, **kwargs)


def test_interrupted_run_resumes_to_identical_results(tmp_path):
    with pytest.raises(Crash):
        run_study(recipe(), tmp_path / "a", backend=CrashingBackend(17), progress=False)
    out = run_study(recipe(), tmp_path / "a", backend=FakeBackend(), progress=False)
    assert out.points_done_before == 17 and out.points_run == 49 - 17
    run_study(recipe(), tmp_path / "b", backend=FakeBackend(), progress=False)
    with Store.in_dir(tmp_path / "a") as a, Store.in_dir(tmp_path / "b") as b:
        assert _scores(a) == _scores(b)


def _scores(store):
    return sorted((p["key"], p["score"], len(store.examples(p["key"]))) for p in store.points())


def test_run_dir_of_another_recipe_is_refused(tmp_path):
    run_study(recipe(), tmp_path / "run", backend=FakeBackend(), progress=False)
    other = recipe(seeds=[0])
    with pytest.raises(PrunelabError, match="another recipe"):
        run_study(other, tmp_path / "run", backend=FakeBackend(), progress=False)
    out = run_study(other, tmp_path / "run", backend=FakeBackend(), force=True, progress=False)
    assert out.points_run == 0  # every point of the smaller recipe was already there
    # changing only the analysis is not another recipe: the run is re-analysed in place
    reanalysed = parse_recipe({**RECIPE, "seeds": [0], "analysis": {"n_boot": 60}})
    run_study(reanalysed, tmp_path / "run", backend=FakeBackend(), progress=False)
    assert json.loads((tmp_path / "run/run.json").read_text())["recipe"]["analysis"]["n_boot"] == 60
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_text("x")
    with pytest.raises(PrunelabError, match="not a prunelab run directory"):
        run_study(other, stranger, backend=FakeBackend(), progress=False)


def test_semantic_problems_fail_before_any_work(tmp_path):
    bad = recipe(tasks=["digits", "nope"],
                 compressions=[{"method": "prune-it", "sparsity": [0.5], "patterns": ["4:2"]}])
    backend = FakeBackend()
    with pytest.raises(PrunelabError) as err:
        run_study(bad, tmp_path / "run", backend=backend, progress=False)
    for path in ("compressions[0].method", "compressions[0].patterns[0]", "tasks[1]"):
        assert path in str(err.value)
    assert backend.calls == [] and not (tmp_path / "run").exists()


def test_dry_run_reports_grid_and_pending(tmp_path):
    backend = FakeBackend(eval_sleep=0.5, compress_sleep=2.0)
    plan = dry_run(recipe(), backend)
    assert plan["grid"] == {"models": 1, "compressed_models": 7, "task_levels": 7, "points": 49}
    assert plan["pending_points"] == 49
    assert plan["est_seconds"] == pytest.approx(6 * 2.0 + 49 * 0.5)
    assert backend.calls == []


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.runner import run_study
    from prunelab.study.testing import FakeBackend
    recipe = parse_recipe({recipe!r})
    run_study(recipe, sys.argv[1], backend=FakeBackend(eval_sleep=0.1, size=400),
              progress=False)
    print("DONE")
""")


def test_kill_9_never_corrupts_the_store(tmp_path):
    """SIGKILL a real study process at random moments; every committed point stays whole."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(recipe={**RECIPE, "eval": {"limit": 400}}))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    seen = []
    for delay in (0.0, 0.05, 0.3, 0.15, 0.4):
        proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Start-up time varies with machine load: wait until this process has stored a new
        # point, then kill it a little later (mid-evaluation or mid-commit, by chance).
        before = seen[-1] if seen else 0
        deadline = time.time() + 60
        while _count(run_dir) <= before and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store.in_dir(run_dir) as store:
            assert store.integrity() == "ok"
            points = store.points()
            # all or nothing: a point is never stored without all its examples
            assert all(len(store.examples(p["key"])) == p["n"] == 400 for p in points)
            seen.append(len(points))
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < 49
    done = subprocess.run([sys.executable, str(script), str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "DONE" in done.stdout, done.stderr
    with Store.in_dir(run_dir) as store:
        assert len(store.points()) == 49 and store.integrity() == "ok"


def _count(run_dir):
    import sqlite3

    if not (run_dir / "results.sqlite").exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM points").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def test_eta_starts_from_the_plan_and_follows_the_run():
    from prunelab.study.estimate import eta_seconds

    # The case: a dry run of 26 minutes; the first point, planned at 5 s, took 47 s
    # because it also loaded the model. tqdm's rescaling showed about 4 hours; the plan holds.
    assert 26 * 60 <= eta_seconds(26 * 60, 5.2, 47.0) <= 30 * 60
    # Nothing done yet: the plan's total.
    assert eta_seconds(100.0, 0.0, 0.0) == 100.0
    # Once a quarter of the planned work is done, the measured pace alone: twice as slow.
    assert eta_seconds(100.0, 25.0, 50.0) == pytest.approx(150.0)
    assert eta_seconds(100.0, 50.0, 25.0) == pytest.approx(25.0)  # twice as fast
    # In between, a blend: between the plan's left and the measured pace's.
    assert 90.0 < eta_seconds(100.0, 10.0, 20.0) < 180.0
    assert eta_seconds(100.0, 100.0, 300.0) == 0.0


def test_progress_bar_eta_on_the_fake_backend(tmp_path, capsys):
    import re

    class SlowLoad(FakeBackend):  # the model load, which the plan does not price
        def load(self, model):
            time.sleep(1.0)
            return super().load(model)

    recipe = parse_recipe({**RECIPE, "tasks": ["digits"]})
    backend = SlowLoad(compress_sleep=0.2, eval_sleep=0.02)
    plan = dry_run(recipe, backend)["est_seconds"]
    run_study(recipe, tmp_path, backend=backend, progress=True)
    shown = re.findall(r"<(\d\d):(\d\d)\]", capsys.readouterr().err)
    etas = [60 * int(m) + int(s) for m, s in shown]
    assert etas and abs(etas[0] - plan) <= 1  # the dry run's estimate first
    # After the first point (a second's load for 0.02 s planned: tqdm's pace said 50 times
    # the plan), still about the plan; later the measured pace, the load included, takes over.
    assert max(etas[:4]) <= 2 * plan + 1
    assert etas[-1] == 0
