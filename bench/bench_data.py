"""What the data that needs no BIG-bench costs to build, as a multiple of reading Python's
reference text (the default calibration and perplexity source).

    python bench/bench_data.py --repeats 5

Each source is built from nothing in a fresh process of this Python (the process start is
included, the same for all), alternately, and the median wall time of each is taken; the
ratios are what is reported. Django's wheel must already be in the cache (any `ui_ppl` run,
or `prunelab tasks ui_ppl`, fetches it once).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

BUILDS = {
    "python-ref-a + python-ref-b text":
        "from prunelab.data.sources import load_text; load_text('python-ref-a'); "
        "load_text('python-ref-b')",
    "synth_arithmetic, 5 levels x 600 items":
        "from prunelab.tasks.synthetic_arithmetic import synthetic_arithmetic_items as s; "
        "[s(d) for d in range(1, 6)]",
    "ui_ppl, 11 languages (parse Django's catalogues)":
        "from prunelab.tasks.ui_messages import django_messages; django_messages()",
    "BIG-bench availability (registry asked once)":
        "from prunelab.data.bigbench import availability; availability()",
}


def wall_time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in BUILDS}
    for code in BUILDS.values():
        wall_time(code)  # warm the file cache and .pyc files once, unmeasured
    for _ in range(args.repeats):
        for name, code in BUILDS.items():
            times[name].append(wall_time(code))
    base = statistics.median(times[next(iter(BUILDS))])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<50} {median:6.2f} s  x{median / base:5.2f}")


if __name__ == "__main__":
    main()
