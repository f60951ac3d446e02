"""A study in one process of N threads against N worker processes of one thread each.

    python bench/bench_workers.py [--limit 40] [--methods magnitude,wanda,sparsegpt]

Runs the demo recipe cut down (one sparsity per method, --limit items per level) twice on
this machine's cores, each as a fresh `prunelab study` process: `--workers 1` with every
core's thread in one process, then `--workers N` (N = the cores, one thread each). Prints
both wall times, their ratio, and the largest difference between the two runs' scores (the
thread count changes float rounding, nothing else).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(run_dir: Path, workers: int, threads: int, args) -> float:
    compressions = [{"method": m, "sparsity": [args.sparsity]} for m in args.methods.split(",")]
    prunelab = Path(sys.executable).with_name("prunelab")  # the console script of this venv
    command = [str(prunelab), "study", str(ROOT / "recipes" / "demo.yaml"),
               "--run-dir", str(run_dir), "--limit", str(args.limit), "--no-progress",
               "--no-report", "--workers", str(workers),
               "--set", f"compressions={json.dumps(compressions)}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"--workers {workers} failed:\n{done.stderr[-2000:]}")
    return seconds


def scores(run_dir: Path) -> dict[str, float]:
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return dict(db.execute("select key, score from points"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="items per task level")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(Path(tmp) / "one", 1, args.cores, args)
        many = run(Path(tmp) / "many", args.cores, 1, args)
        a, b = scores(Path(tmp) / "one"), scores(Path(tmp) / "many")
    differ = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a if k in b), default=0.0)
    print(f"{len(a)} points ({args.methods} at {args.sparsity:g} and dense, {args.limit} items "
          f"per level): 1 process x {args.cores} threads {one:.1f} s, {args.cores} processes "
          f"x 1 thread {many:.1f} s")
    print(f"study with {args.cores} one-thread workers / one {args.cores}-thread process: "
          f"{many / one:.2f} (largest relative score difference {differ:.1e}; same points: "
          f"{set(a) == set(b)})")


if __name__ == "__main__":
    main()
