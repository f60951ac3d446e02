"""Studies on a Ray cluster: a real two-node cluster on loopback, identity with a local run,
a worker killed mid-run, and the bad input of `--executor ray`.

The cluster tests start `ray start --head` and a second node with `ray start --address`, each
in a process group of its own, and kill both groups (and any worker left behind) at the end,
whatever happened. They are skipped where Ray is not installed (pip install 'prunelab[ray]').
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bench_helpers import compare_runs
from cli_helpers import assert_user_error, run
from prunelab.errors import PrunelabError
from prunelab.study.plan import CompressionPoint, TaskInfo
from prunelab.study.ray_executor import (GIB, PointNeeds, point_needs, ray_installed,
                                         resolve_address, unmet)
from prunelab.study.ray_testing import HOST, LoopbackCluster, free_port, pids_mentioning
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import PointWork, run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend

needs_ray = pytest.mark.skipif(not ray_installed(), reason="ray is not installed "
                               "(pip install 'prunelab[ray]')")


def on_cluster(test):
    """A test on the module's Ray cluster: one xdist group, so only one cluster starts."""
    for mark in (pytest.mark.ray, needs_ray, pytest.mark.xdist_group("ray-cluster")):
        test = mark(test)
    return test


# 4 compressed models (dense included) x 4 levels = 16 points.
RECIPE = {"name": "fake-ray", "models": ["smollm2-135m"], "tasks": ["digits"], "seeds": [0],
          "compressions": [{"method": "magnitude", "sparsity": [0.5, 0.3]},
                           {"method": "wanda", "sparsity": [0.5]}],
          "eval": {"limit": 20}, "analysis": {"n_boot": 100}}
POINTS = 16


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster(nodes=2) as started:
        yield started
    assert pids_mentioning(started.temp) == []  # every process it started is gone


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    run_study(parse_recipe(RECIPE), run_dir, backend=FakeBackend(), progress=False)
    return run_dir


# -- on the cluster ----------------------------------------------------------------------------


@on_cluster
def test_cluster_run_equals_local_run(cluster, local_run, tmp_path):
    from prunelab.study.ray_executor import RayExecutor

    run_dir = tmp_path / "ray"
    # Every result goes through the shared directory (inline limit 0), none through Ray.
    executor = RayExecutor(cluster.address, inline_bytes=0)
    out = run_study(parse_recipe(RECIPE), run_dir, backend=FakeBackend(), executor=executor,
                    progress=False)
    assert out.points_run == out.points_total == POINTS
    compared, differences = compare_runs(local_run, run_dir)
    assert differences == [] and compared > POINTS
    assert not list(run_dir.glob("ray-artifacts-*"))  # nothing left behind


@on_cluster
def test_killed_worker_is_retried_and_nothing_finished_recomputed(cluster, local_run,
                                                                  tmp_path):
    from prunelab.study.ray_executor import RayExecutor

    def kill_the_fourth(marker: dict) -> None:
        os.kill(marker["pid"], signal.SIGKILL)

    run_dir, started = _run_killing(cluster, tmp_path, kill_the_fourth)
    evaluated = Counter(tuple(m["point"]) for m in started)
    # Every point evaluated once, the one killed mid-way twice: nothing finished recomputed.
    assert len(evaluated) == POINTS and evaluated[tuple(started[3]["point"])] == 2
    assert sum(evaluated.values()) == POINTS + 1
    assert compare_runs(local_run, run_dir)[1] == []


def _run_killing(cluster, tmp_path, kill) -> tuple[Path, list[dict]]:
    """Run the study on the cluster; when the fourth evaluation starts, `kill(its marker)`.
    Returns the run directory and every evaluation's marker, in the order they started."""
    from prunelab.study.ray_executor import RayExecutor

    markers = tmp_path / "markers"
    markers.mkdir()
    killed = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = sorted(markers.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
            if len(found) >= 4:
                kill(json.loads(found[3].read_text()))
                killed.set()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run_dir = tmp_path / "ray"
    backend = FakeBackend(eval_sleep=0.5, marker_dir=str(markers))
    out = run_study(parse_recipe(RECIPE), run_dir, backend=backend,
                    executor=RayExecutor(cluster.address), progress=False)
    thread.join()
    assert killed.is_set(), "nothing was killed"
    assert out.points_run == out.points_total == POINTS
    with Store.in_dir(run_dir) as store:
        assert len(store.finished_keys()) == POINTS
    started = sorted(markers.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return run_dir, [json.loads(p.read_text()) for p in started]


class GpuFakeBackend(FakeBackend):
    device = "cuda"  # its points each declare a GPU


@on_cluster
def test_cluster_without_a_gpu_refuses_before_writing(cluster, tmp_path):
    from prunelab.study.ray_executor import RayExecutor

    run_dir = tmp_path / "run"
    with pytest.raises(PrunelabError, match="1 GPU") as info:
        run_study(parse_recipe(RECIPE), run_dir, backend=GpuFakeBackend(),
                  executor=RayExecutor(cluster.address), progress=False)
    assert "largest node: 1 CPU, 0 GPU" in str(info.value)
    assert not run_dir.exists()


class ElsewhereBackend(FakeBackend):
    """Other software versions in every process but the one that made it (a Ray worker)."""

    def __init__(self):
        super().__init__()
        self.driver = os.getpid()

    def versions(self) -> dict:
        found = super().versions()
        return found if os.getpid() == self.driver else {**found, "fake": "2"}


@on_cluster
def test_a_node_with_other_versions_is_refused(cluster, tmp_path):
    import ray.cloudpickle

    from prunelab.study.ray_executor import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import it
    with pytest.raises(PrunelabError, match="runs other software than the driver"):
        run_study(parse_recipe(RECIPE), tmp_path / "run", backend=ElsewhereBackend(),
                  executor=RayExecutor(cluster.address), progress=False)
    with Store.in_dir(tmp_path / "run") as store:
        assert store.finished_keys() == set()


@on_cluster
def test_lost_node_is_survived(cluster, local_run, tmp_path):
    """The second node dies (its whole process group, kill -9) mid-run: its worker is
    restarted on the head and the study completes. Last of the cluster tests: it leaves one
    node."""
    run_dir, started = _run_killing(cluster, tmp_path, lambda marker: cluster.kill_node(1))
    evaluated = Counter(tuple(m["point"]) for m in started)
    assert len(evaluated) == POINTS and max(evaluated.values()) <= 2
    assert POINTS <= sum(evaluated.values()) <= POINTS + 1  # at most the one it was running
    assert compare_runs(local_run, run_dir)[1] == []


# -- what a point declares (no cluster) --------------------------------------------------------


def _work(calibrated: bool, kind: str = "mc") -> PointWork:
    from prunelab.study.recipe import Evaluation

    point = CompressionPoint(calibration=({"n_samples": 8} if calibrated else None,))
    task = TaskInfo("digits:1", "digits", "difficulty", 1, 0, 0.25, 60, kind)
    return PointWork("k", "g", "smollm2-135m", point, "c", task, Evaluation())


def test_point_needs_follow_the_work():
    plain, calibrated = _work(False), _work(True)
    assert point_needs(plain, None).gpus == 0 and point_needs(plain, "cuda").gpus == 1
    assert point_needs(calibrated, None).memory > point_needs(plain, None).memory
    assert point_needs(_work(False, "finetune"), None).memory > point_needs(plain, None).memory
    node = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 8.0 * GIB}}
    assert not unmet(PointNeeds(1, 0, GIB), [node])
    assert unmet(PointNeeds(1, 1, GIB), [node])  # a GPU asked, none there
    assert unmet(PointNeeds(1, 0, 9 * GIB), [node])
    assert unmet(PointNeeds(1, 0, GIB), [{**node, "Alive": False}])


# -- bad input of the command line -------------------------------------------------------------


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(RECIPE))
    return path


def test_address_without_ray_executor(recipe_file, tmp_path):
    result = run("study", str(recipe_file), "--address", "10.0.0.1:6379",
                 "--run-dir", str(tmp_path / "run"))
    assert_user_error(result, "--address is for a Ray cluster")
    result = run("study", str(recipe_file), "--shared-dir", str(tmp_path / "shared"),
                 "--run-dir", str(tmp_path / "run"))
    assert_user_error(result, "--shared-dir is for a Ray cluster")
    assert not (tmp_path / "run").exists() and not (tmp_path / "shared").exists()


def test_unknown_executor(recipe_file, tmp_path):
    result = run("study", str(recipe_file), "--executor", "dask", "--run-dir",
                 str(tmp_path / "run"))
    assert_user_error(result, "--executor 'dask'")
    assert not (tmp_path / "run").exists()


@needs_ray
def test_unreachable_address_is_refused_quickly(recipe_file, tmp_path):
    started = time.monotonic()
    result = run("study", str(recipe_file), "--executor", "ray", "--address",
                 f"{HOST}:{free_port()}", "--run-dir", str(tmp_path / "run"))
    assert_user_error(result, "no Ray cluster answers at 127.0.0.2")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "run").exists()


@needs_ray
def test_malformed_and_missing_auto_address(recipe_file, tmp_path, monkeypatch):
    result = run("study", str(recipe_file), "--executor", "ray", "--address", "head-node",
                 "--run-dir", str(tmp_path / "run"))
    assert_user_error(result, "is not HOST:PORT or auto")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster recorded there
    with pytest.raises(PrunelabError, match="no Ray cluster runs on this machine"):
        resolve_address("auto")
    assert not (tmp_path / "run").exists()


def test_ray_executor_without_ray_installed(recipe_file, tmp_path):
    # Ray made unimportable in a fresh interpreter, as where prunelab[ray] is not installed.
    code = ("import sys; sys.modules['ray'] = None; from prunelab.cli import main; "
            f"main(['study', {str(recipe_file)!r}, '--executor', 'ray', '--run-dir', "
            f"{str(tmp_path / 'run')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "pip install 'prunelab[ray]'" in lines[0]
    assert not (tmp_path / "run").exists()
