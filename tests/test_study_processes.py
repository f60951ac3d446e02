"""`prunelab study --workers N`: points computed in worker processes of this machine give the
same results as one process; a failing or killed worker, Ctrl-C and a machine without the
memory for N workers are met in one line, with every finished point kept."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench_helpers import compare_runs
from cli_helpers import assert_user_error, foreground_signals, run
from prunelab.errors import PrunelabError
from prunelab.study import processes
from prunelab.study.processes import ProcessExecutor
from prunelab.study.recipe import parse_recipe
from prunelab.study.results import load_run
from prunelab.study.runner import run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend

# 4 compressed models (dense included) x 4 levels = 16 points.
RECIPE = {"name": "fake-procs", "models": ["smollm2-135m"], "tasks": ["digits"], "seeds": [0],
          "compressions": [{"method": "magnitude", "sparsity": [0.5, 0.3]},
                           {"method": "wanda", "sparsity": [0.5]}],
          "eval": {"limit": 20}, "analysis": {"n_boot": 100}}
POINTS = 16


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    run_study(parse_recipe(RECIPE), run_dir, backend=FakeBackend(), progress=False)
    return run_dir


def test_two_workers_give_the_results_of_one_process(local_run, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    out = run_study(parse_recipe(RECIPE), tmp_path / "run",
                    backend=FakeBackend(eval_sleep=0.2, marker_dir=str(markers)),
                    executor=ProcessExecutor(workers=2, threads=1), progress=False)
    assert out.points_run == out.points_total == POINTS
    compared, differences = compare_runs(local_run, tmp_path / "run")
    assert differences == [] and compared > POINTS
    pids = {json.loads(p.read_text())["pid"] for p in markers.glob("*.json")}
    assert len(pids) == 2 and os.getpid() not in pids  # both workers computed, the driver not
    # The workers finish in another order (costliest first); the report reads the recipe's.
    ours, theirs = load_run(local_run), load_run(tmp_path / "run")
    assert [p["grid_id"] for p in theirs.points] == [p["grid_id"] for p in ours.points]
    assert [c["key"] for c in theirs.compressions] == [c["key"] for c in ours.compressions]
    assert ([(v["arm"], v["family"], v["verdict"]) for v in theirs.analysis.verdicts]
            == [(v["arm"], v["family"], v["verdict"]) for v in ours.analysis.verdicts])


class FailingBackend(FakeBackend):
    """A compression that the user must fix, found in the worker."""

    def compress(self, handle, point):
        if not point.is_dense and point.first.get("sparsity") == 0.3:
            raise PrunelabError("sparsity 0.3 is refused here", "pick another")
        return super().compress(handle, point)


def test_a_point_failing_in_a_worker_raises_its_own_error_and_keeps_the_rest(tmp_path):
    with pytest.raises(PrunelabError) as caught:
        run_study(parse_recipe(RECIPE), tmp_path / "run", backend=FailingBackend(),
                  executor=ProcessExecutor(workers=1, threads=1), progress=False)
    assert (caught.value.problem, caught.value.fix) == ("sparsity 0.3 is refused here",
                                                       "pick another")
    with Store.in_dir(tmp_path / "run") as store:
        kept = len(store.finished_keys())
    # Rerun on a backend that accepts it: only the missing points run.
    out = run_study(parse_recipe(RECIPE), tmp_path / "run", backend=FakeBackend(),
                    executor=ProcessExecutor(workers=2, threads=1), progress=False)
    assert out.points_done_before == kept and out.points_run == POINTS - kept


def test_a_killed_worker_stops_the_study_in_one_line_and_a_rerun_completes(local_run,
                                                                            tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    driver = _driver(tmp_path, markers, workers=2)
    _wait_for(markers, 3)
    os.kill(json.loads(sorted(markers.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)[2]
                       .read_text())["pid"], signal.SIGKILL)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 2, err
    assert "a worker process died (exit status -9)" in err and "rerun to resume" in err
    _assert_gone(markers)
    out = run_study(parse_recipe(RECIPE), tmp_path / "run", backend=FakeBackend(),
                    executor=ProcessExecutor(workers=2, threads=1), progress=False)
    assert out.points_done_before + out.points_run == POINTS
    assert compare_runs(local_run, tmp_path / "run")[1] == []


def test_ctrl_c_stops_the_workers_and_keeps_what_finished(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    driver = _driver(tmp_path, markers, workers=2)
    _wait_for(markers, 4)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err
    assert "points kept" in err and "rerun to resume" in err
    _assert_gone(markers)
    with Store.in_dir(tmp_path / "run") as store:
        assert 0 < len(store.finished_keys()) < POINTS


def _driver(tmp_path: Path, markers: Path, workers: int) -> subprocess.Popen:
    """A study of slow fake points in a process of its own, as the CLI runs it: a
    PrunelabError ends it with status 2, Ctrl-C with 130."""
    code = textwrap.dedent(f"""
        import sys
        from prunelab.errors import PrunelabError
        from prunelab.study.processes import ProcessExecutor
        from prunelab.study.recipe import parse_recipe
        from prunelab.study.runner import StudyInterrupted, run_study
        from prunelab.study.testing import FakeBackend
        try:
            run_study(parse_recipe({RECIPE!r}), {str(tmp_path / "run")!r},
                      backend=FakeBackend(eval_sleep=0.4, marker_dir={str(markers)!r}),
                      executor=ProcessExecutor(workers={workers}, threads=1), progress=False)
        except PrunelabError as exc:
            print(exc, file=sys.stderr); sys.exit(2)
        except StudyInterrupted as exc:
            print(exc, file=sys.stderr); sys.exit(130)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=foreground_signals)


def _wait_for(markers: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(list(markers.glob("*.json"))) < count:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)


def _assert_gone(markers: Path) -> None:
    """Every worker process that computed a point has ended."""
    for pid in {json.loads(p.read_text())["pid"] for p in markers.glob("*.json")}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        pytest.fail(f"worker {pid} still runs")


def test_more_workers_than_memory_allows_is_refused_before_anything_is_written(
        tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "available_memory", lambda: 3 * 1024**3)
    with pytest.raises(PrunelabError) as caught:
        run_study(parse_recipe(RECIPE), tmp_path / "run", backend=FakeBackend(),
                  executor=ProcessExecutor(workers=8), progress=False)
    assert "8 workers need about" in caught.value.problem
    assert caught.value.fix.startswith("pass --workers ")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(RECIPE))
    return path


def test_bad_workers_options(recipe_file, tmp_path):
    result = run("study", str(recipe_file), "--workers", "0", "--run-dir", str(tmp_path / "r"))
    assert_user_error(result, "--workers 0 is not a number of processes")
    result = run("study", str(recipe_file), "--workers", "2", "--executor", "ray",
                 "--run-dir", str(tmp_path / "r"))
    assert_user_error(result, "--workers is for the local executor")
    assert not (tmp_path / "r").exists()


def test_a_prunelab_error_keeps_its_fix_across_processes():
    import pickle

    error = PrunelabError("the problem", "the fix")
    error.add_note("where")
    again = pickle.loads(pickle.dumps(error))
    assert (again.problem, again.fix, str(again)) == ("the problem", "the fix",
                                                      "the problem (the fix)")
    assert again.__notes__ == ["where"]


def test_fitted_workers_shrink_to_the_memory_and_the_models(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "available_memory", lambda: 3 * 1024**3)
    executor = ProcessExecutor(workers=8, fit=True)
    markers = tmp_path / "markers"
    markers.mkdir()
    out = run_study(parse_recipe(RECIPE), tmp_path / "run",
                    backend=FakeBackend(marker_dir=str(markers)), executor=executor,
                    progress=False)
    assert out.points_run == POINTS
    # one worker's memory fits: it runs in this process, as the local executor would
    assert executor.workers == 1
    assert {json.loads(p.read_text())["pid"] for p in markers.glob("*.json")} == {os.getpid()}
    monkeypatch.setattr(processes, "available_memory", lambda: 1024**4)
    executor = ProcessExecutor(workers=64, fit=True)
    run_study(parse_recipe(RECIPE), tmp_path / "run2", backend=FakeBackend(), executor=executor,
              progress=False)
    assert executor.workers == 4  # no more than the compressed models to build
