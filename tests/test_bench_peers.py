"""bench/peers.py refuses bad arguments in one line, and a failing peer becomes a result row."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv, **kw):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, **kw)


@pytest.mark.parametrize("bad, says", [
    (["--methods", "wanda50,nope"], "unknown method 'nope'"),
    (["--systems", "prunelab,vllm"], "unknown system 'vllm'"),
    (["--calib-samples", "0"], "--calib-samples is 0"),
    (["--eval-windows", "-1"], "--eval-windows is -1"),
])
def test_bad_arguments_are_refused_in_one_line(bad, says):
    proc = run("bench/peers.py", "--calib-source", "c.txt", "--eval-source", "e.txt", *bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failing_peer_writes_its_reason_as_a_row(tmp_path):
    result = tmp_path / "result.json"
    proc = run("bench/peers/worker.py", "--system", "prunelab", "--method", "wanda50",
               "--model-dir", str(tmp_path / "no-model"), "--calib", str(tmp_path / "none"),
               "--calib-source", "c.txt", "--out", str(tmp_path / "w.safetensors"),
               "--result", str(result))
    assert proc.returncode == 1
    row = json.loads(result.read_text())
    assert row["error"] and row["system"] == "prunelab" and row["method"] == "wanda50"
    assert not (tmp_path / "w.safetensors").exists()


def test_a_method_a_peer_lacks_is_not_offered(tmp_path):
    sys.path.insert(0, str(ROOT / "bench" / "peers"))
    import worker

    with pytest.raises(NotImplementedError):
        worker.run_modelopt(None, worker.METHODS["wanda50"], None, None)
    assert worker.group_size_of(str(ROOT / "tests"), None) is None
