"""Ctrl-C (SIGINT) and SIGTERM stop a real `prunelab` process with status 130 and one line."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_helpers import foreground_signals

REPO = Path(__file__).resolve().parents[1]

# The command runs for real up to the point named; there it announces itself and waits, as a
# long pruning run or study would, until the signal arrives.
PPL = """
import sys, time
import prunelab.zoo.models as zoo
from prunelab.cli import main

def load_model(*args, **kwargs):
    print("ready", flush=True)
    time.sleep(120)

zoo.load_model = load_model
main(["ppl", "smollm2-135m", "--windows", "2"])
"""

STUDY = """
import sys, time
import prunelab.study.runner as runner
from prunelab.cli import main
from prunelab.study.store import POINT_COLUMNS, Store

def run_study(recipe, run_dir, **kwargs):
    run_dir.mkdir(parents=True)
    with Store.in_dir(run_dir) as store:  # two points finished before the interruption
        for key in ("first", "second"):
            store.put_point({**{c: 0 for c in POINT_COLUMNS}, "key": key, "level": 1}, [])
    print("ready", flush=True)
    time.sleep(120)

runner.run_study = run_study
main(["study", "recipes/demo.yaml", "--run-dir", sys.argv[1], "--no-report"])
"""


def _interrupt(script: str, how: signal.Signals, *args: str) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=foreground_signals)
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        process.send_signal(how)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_command_exits_130_with_one_line(how):
    done = _interrupt(PPL, how)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["prunelab: interrupted"]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_study_says_how_many_points_it_kept(how, tmp_path):
    done = _interrupt(STUDY, how, str(tmp_path / "run"))
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [
        "prunelab: interrupted; 2 points kept, rerun to resume"]
