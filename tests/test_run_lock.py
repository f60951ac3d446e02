"""Two studies on one run directory: the second is refused at once in one line (exit 2), the
first computes every point once; a lock left by a killed study blocks nobody. Real
processes, through `prunelab.cli.main`, on the fake backend."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

RECIPE = {"name": "lock", "models": ["m"], "tasks": ["digits"],
          "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]}],
          "eval": {"limit": 10}, "analysis": {"n_boot": 50}}
POINTS = 3 * 4  # dense and two sparsities, four digit levels

# A study through the CLI whose backend is the fake one, each compression taking SLEEP s.
SCRIPT = textwrap.dedent("""
    import sys
    import prunelab.study.backend
    from prunelab.study.testing import FakeBackend
    sleep = float(sys.argv[1])
    prunelab.study.backend.PrunelabBackend = lambda device=None: FakeBackend(compress_sleep=sleep)
    from prunelab.cli import main
    main(["study", sys.argv[2], "--run-dir", sys.argv[3], "--no-progress", "--no-report"])
""")


def _start(tmp_path, sleep: float) -> subprocess.Popen:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(sleep), str(recipe),
                             str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_holder(tmp_path, proc, seconds=60.0) -> None:
    """Until the study holds the directory (its pid is written once it has the lock)."""
    deadline = time.monotonic() + seconds
    while not (tmp_path / "run" / "study.pid").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first study never took the run directory"
        time.sleep(0.05)


def _stored_points(tmp_path) -> list[str]:
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as conn:
        return [r[0] for r in conn.execute("SELECT key FROM points")]


def test_second_study_on_a_run_dir_is_refused_at_once(tmp_path):
    first = _start(tmp_path, sleep=1.5)
    try:
        _wait_for_holder(tmp_path, first)
        started = time.monotonic()
        second = _start(tmp_path, sleep=0.0)
        out, err = second.communicate(timeout=120)
        refused_after = time.monotonic() - started
        assert second.returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"is in use by another study (pid {first.pid})" in lines[0]
        assert "wait for it or use another --run-dir" in lines[0]
        assert refused_after < 60  # at once: no waiting on the first study's points
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert f"{POINTS} points run, 0 already done" in out
    keys = _stored_points(tmp_path)
    assert len(keys) == len(set(keys)) == POINTS
    assert not (tmp_path / "run" / "study.pid").exists()  # the holder's pid goes with it


def test_a_killed_study_leaves_no_lock_behind(tmp_path):
    killed = _start(tmp_path, sleep=30.0)
    try:
        _wait_for_holder(tmp_path, killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert (tmp_path / "run" / "study.lock").exists()  # the file stays; the OS lock does not
    again = _start(tmp_path, sleep=0.0)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"(of {POINTS})" in out
    keys = _stored_points(tmp_path)
    assert len(keys) == len(set(keys)) == POINTS


def test_a_study_killed_before_its_run_record_can_claim_the_directory_again(tmp_path):
    # Killed between the recipe copy and run.json: only the claim's own files are there.
    from prunelab.errors import PrunelabError
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.runner import check_run_dir

    recipe = parse_recipe({"name": "r", "models": ["m"], "tasks": ["t"],
                           "compressions": [{"method": "wanda", "sparsity": [0.5]}]})
    run = tmp_path / "run"
    run.mkdir()
    for name in ("study.lock", "study.pid", "recipe.yaml", ".run.json.tmp-abc123"):
        (run / name).write_text("")
    check_run_dir(run, recipe, force=False)  # no refusal: no result exists yet
    (run / "results.sqlite").write_text("")
    with pytest.raises(PrunelabError, match="is not a prunelab run directory"):
        check_run_dir(run, recipe, force=False)
