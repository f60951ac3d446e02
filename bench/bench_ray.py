"""A study on a two-node Ray cluster on loopback against the same study run locally.

    .venv/bin/python bench/bench_ray.py            # the fake backend (no model): 16 points
    .venv/bin/python bench/bench_ray.py --real     # smollm2-135m, local text and task files

Starts the cluster (`prunelab.study.ray_testing.LoopbackCluster`, one CPU per node), runs
the study locally, then on the cluster, then on the cluster again while a worker process is
killed (kill -9) as its fourth evaluation starts; prints each wall time, the ratios to the
local run, and whether each cluster run's store equals the local one (bench/compare_runs.py:
every row and field but the wall-clock ones). Needs prunelab[ray]. The cluster is stopped and
its processes killed at the end, whatever happened.

--real needs the model in the cache (`prunelab ppl smollm2-135m --windows 2` fetches it) and
reads the text files named by --calibration and --eval (disjoint halves of one text).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

from prunelab.study.ray_executor import RayExecutor
from prunelab.study.ray_testing import LoopbackCluster
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study

FAKE = {"name": "bench-ray", "models": ["smollm2-135m"], "tasks": ["digits"], "seeds": [0],
        "compressions": [{"method": "magnitude", "sparsity": [0.5, 0.3]},
                         {"method": "wanda", "sparsity": [0.5]}],
        "eval": {"limit": 20}, "analysis": {"n_boot": 100}}
FAKE_EVAL_SECONDS = 1.0  # each fake evaluation sleeps this long: parallelism shows


def _compare_runs():
    spec = importlib.util.spec_from_file_location(
        "compare_runs", Path(__file__).parent / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare


def sums_task(folder: Path, items: int = 30) -> Path:
    """A three-level multiple-choice task (sums of 1-, 2- and 3-digit numbers, 4 choices)
    written as a local task spec: no download needed."""
    rng = random.Random(0)
    levels = []
    for digits in (1, 2, 3):
        rows = []
        for i in range(items):
            a, b = (rng.randrange(10 ** (digits - 1), 10**digits) for _ in range(2))
            wrong = rng.sample([d for d in range(-9, 10) if d], 3)
            rows.append({"id": i, "input": f"{a} + {b} =",
                         "choices": [str(a + b)] + [str(a + b + d) for d in wrong], "answer": 0})
        (folder / f"sums{digits}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        levels.append({"level": digits, "level_rank": digits - 1, "data": f"sums{digits}.jsonl"})
    spec = folder / "sums.yaml"
    spec.write_text(json.dumps({"name": "sums", "family": "sums", "axis": "difficulty",
                                "kind": "mc", "levels": levels}))
    return spec


def real_recipe(folder: Path, calibration: str, evaluation: str) -> dict:
    return {"name": "bench-ray-real", "models": ["smollm2-135m"],
            "tasks": [str(sums_task(folder))], "seeds": [0],
            "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.5]},
                             {"method": "wanda", "sparsity": [0.5]}],
            "calibration": {"source": calibration, "n_samples": 8, "seqlen": 128},
            "perplexity": {"source": evaluation, "seqlen": 128, "n_windows": 4},
            "eval": {"limit": 30}, "analysis": {"n_boot": 100}}


def backend_for(real: bool, marker_dir: Path | None = None):
    if real:
        from prunelab.study.backend import PrunelabBackend

        return PrunelabBackend()
    from prunelab.study.testing import FakeBackend

    return FakeBackend(eval_sleep=FAKE_EVAL_SECONDS,
                       marker_dir=str(marker_dir) if marker_dir else None)


def kill_fourth_evaluation(markers: Path, killed: list) -> None:
    """Kill -9 the process whose evaluation is the fourth to start (fake backend markers)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = sorted(markers.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        if len(found) >= 4:
            pid = json.loads(found[3].read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


class FirstResult:
    """An executor wrapper noting when the first result arrived (joining the cluster and
    starting the workers come before it)."""

    def __init__(self, executor):
        self.executor, self.at = executor, None
        self.started = time.perf_counter()

    def check(self, study, run_dir):
        self.executor.check(study, run_dir)

    def close(self):
        self.executor.close()

    def map(self, make_worker, items):
        for result in self.executor.map(make_worker, items):
            if self.at is None:
                self.at = time.perf_counter() - self.started
            yield result


def timed_run(recipe, run_dir: Path, backend, executor=None) -> tuple[float, int]:
    started = time.perf_counter()
    out = run_study(recipe, run_dir, backend=backend, executor=executor, progress=False)
    return time.perf_counter() - started, out.points_run


def cluster_run(recipe, run_dir: Path, backend, address: str) -> tuple[float, float]:
    """(wall seconds, seconds to the first result)."""
    executor = FirstResult(RayExecutor(address))
    seconds, _ = timed_run(recipe, run_dir, backend, executor)
    return seconds, executor.at or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="smollm2-135m, not the fake")
    parser.add_argument("--calibration", default="python-ref-a")
    parser.add_argument("--eval", default="python-ref-b")
    args = parser.parse_args()
    compare = _compare_runs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = parse_recipe(real_recipe(tmp, args.calibration, args.eval) if args.real
                              else FAKE)
        local_s, points = timed_run(recipe, tmp / "local", backend_for(args.real))
        print(f"points: {points}; local run: {local_s:.1f} s")
        started = time.perf_counter()
        with LoopbackCluster(nodes=2) as cluster:
            print(f"cluster of 2 nodes x 1 CPU up in {time.perf_counter() - started:.1f} s")
            ray_s, first_s = cluster_run(recipe, tmp / "ray", backend_for(args.real),
                                         cluster.address)
            compared, differences = compare(tmp / "local", tmp / "ray")
            print(f"cluster run: {ray_s:.1f} s = {ray_s / local_s:.2f} x the local run "
                  f"(first result after {first_s:.1f} s: joining, starting the workers); "
                  f"store vs local: {compared} rows compared, {len(differences)} differ")
            for line in differences[:10]:
                print("  ", line)
            if args.real:
                return
            markers = tmp / "markers"
            markers.mkdir()
            killed: list[int] = []
            killer = threading.Thread(target=kill_fourth_evaluation, args=(markers, killed),
                                      daemon=True)
            killer.start()
            kill_s, _ = cluster_run(recipe, tmp / "killed", backend_for(False, markers),
                                    cluster.address)
            killer.join()
            evaluations = len(list(markers.iterdir()))
            compared, differences = compare(tmp / "local", tmp / "killed")
            print(f"cluster run with worker {killed} killed mid-point: {kill_s:.1f} s = "
                  f"{kill_s / ray_s:.2f} x the clean cluster run; {evaluations} evaluations "
                  f"for {points} points; store vs local: {compared} rows compared, "
                  f"{len(differences)} differ")


if __name__ == "__main__":
    main()
