"""How long `prunelab --help` takes, as a multiple of `python -c "import typer"`.

    python bench/bench_cli.py --repeats 7

Both are run as fresh processes of this Python, alternately, and the median wall time of each
is taken; the ratio is what is reported (1.0 would be a CLI that costs nothing beyond typer).
Run it with another checkout's Python to measure that checkout's CLI (its `prunelab` is what
`python -m prunelab.cli` finds), e.g. before and after a change.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HELP = [sys.executable, "-m", "prunelab.cli", "--help"]
TYPER = [sys.executable, "-c", "import typer"]


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    wall_time(HELP)  # warm the file cache (and .pyc files) once, unmeasured
    helps, typers = [], []
    for _ in range(args.repeats):
        helps.append(wall_time(HELP))
        typers.append(wall_time(TYPER))
    help_s, typer_s = statistics.median(helps), statistics.median(typers)
    import prunelab

    print(f"prunelab from {prunelab.__file__}")
    print(f"prunelab --help {help_s:.3f} s, import typer {typer_s:.3f} s (median of "
          f"{args.repeats})")
    print(f"ratio {help_s / typer_s:.2f}")


if __name__ == "__main__":
    main()
