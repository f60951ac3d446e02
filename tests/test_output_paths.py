"""Every output path of every command is checked before any model loads (issue 27, item 2).

Each command is given each kind of output path it cannot write: through a file, a file where
a directory goes (or a directory where a file goes), a kernel file system, a folder it may not
write in. The answer must be one line naming the flag, exit 2, nothing written, and no model
loaded: all cases run in one fresh process, which must never have imported torch (a model
cannot load without it), and the in-process variant fails the test if `load_model` is called.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, run
from prunelab.checks import check_output_dir, check_output_file
from prunelab.errors import PrunelabError

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "demo.yaml")

# The commands, each with the rest of a valid-looking command line; OUT marks the output path.
FILE_OUTPUTS = {
    "eval --out": ["eval", "smollm2-135m", "--tasks", "synth_arithmetic", "--out", "OUT"],
    "eval --summary": ["eval", "smollm2-135m", "--tasks", "synth_arithmetic", "--summary", "OUT"],
    "divergence --out": ["divergence", "smollm2-135m", "pruned", "--out", "OUT"],
    "refusal --out": ["refusal", "smollm2-135m", "--out", "OUT"],
    "route --out": ["route", "smollm2-135m", "--families", "synth_arithmetic,synth_options",
                    "--sparsity", "0.2", "--out", "OUT"],
    "results --out": ["results", "run", "--out", "OUT"],
    "transfer-encoder --out": ["transfer-encoder", "minilm-l6", "--setting", "dense",
                               "--out", "OUT"],
}
DIR_OUTPUTS = {
    "prune --out": ["prune", "smollm2-135m", "--sparsity", "0.5", "--out", "OUT"],
    "quantize --out": ["quantize", "smollm2-135m", "--out", "OUT"],
    "transfer --out": ["transfer", "smollm2-135m", "--setting", "dense", "--train-on",
                       "synth_arithmetic:1", "--out", "OUT"],
    "tasks --export-lmeval": ["tasks", "synth_arithmetic", "--export-lmeval", "OUT"],
    "study --run-dir": ["study", RECIPE, "--run-dir", "OUT"],
    "demo --run-dir": ["demo", "--run-dir", "OUT"],
}
# (the bad path, a fragment of the refusal); `afile` is a file and `adir` a directory
FILE_KINDS = [("afile/x.jsonl", "which is a file"), ("adir", "is a directory, not a file"),
              ("new/", "is a directory, not a file"), ("/proc/x.jsonl", "kernel file system"),
              ("/sys/x.jsonl", "kernel file system")]
DIR_KINDS = [("afile/sub", "which is a file"), ("afile", None),
             ("/proc/x", "kernel file system"), ("/dev/x", "kernel file system")]

CASES = [(name, args, path, fragment) for name, args in FILE_OUTPUTS.items()
         for path, fragment in FILE_KINDS] + \
        [(name, args, path, fragment) for name, args in DIR_OUTPUTS.items()
         for path, fragment in DIR_KINDS]

# Blocks torch and transformers, so that a case which would go on to load a model fails at
# once (and the test names it) instead of running the model.
PROBE = """
import contextlib, importlib.abc, io, json, sys

class NoHeavyImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} imported before the output path was refused")
        return None

sys.meta_path.insert(0, NoHeavyImports())
from prunelab.cli import main

report = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    report.append({"code": code, "stderr": err.getvalue(),
                   "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)})
print(json.dumps(report))
"""


def _workspace(root: Path) -> Path:
    (root / "afile").write_text("a file, not a directory\n")
    (root / "adir").mkdir()
    return root


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _flag(name: str) -> str:
    return name.split()[1]


def test_every_command_refuses_every_bad_output_path_before_torch(tmp_path):
    root = _workspace(tmp_path)
    before = _listing(root)
    arguments = [[path if a == "OUT" else a for a in args] for _, args, path, _ in CASES]
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(arguments)], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for (name, _, path, fragment), case in zip(CASES, json.loads(done.stdout), strict=True):
        lines = [line for line in case["stderr"].splitlines() if line.strip()]
        where = f"{name} {path}: {case}"
        assert case["code"] == 2 and len(lines) == 1, where
        assert "Traceback" not in case["stderr"], where
        assert _flag(name) in lines[0] or "already exists" in lines[0], where
        if fragment:
            assert fragment in lines[0], where
        assert case["heavy"] == [], f"{where} imported {case['heavy']} before refusing"
    assert _listing(root) == before  # nothing written, no folder made


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    import prunelab.zoo.models

    monkeypatch.setattr(prunelab.zoo.models, "load_model", refuse)


@pytest.mark.parametrize("name,args,path,fragment",
                         [c for c in CASES if c[2] in ("afile/x.jsonl", "afile/sub")],
                         ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_in_process_refusal_loads_no_model(tmp_path, monkeypatch, no_model_loads, name, args,
                                            path, fragment):
    root = _workspace(tmp_path)
    monkeypatch.chdir(root)
    before = _listing(root)
    result = run(*[path if a == "OUT" else a for a in args])
    assert_user_error(result, fragment)
    assert _flag(name) in result.stderr
    assert _listing(root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
@pytest.mark.parametrize("name,args", [*FILE_OUTPUTS.items(), *DIR_OUTPUTS.items()])
def test_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch, no_model_loads,
                                                      name, args):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    monkeypatch.chdir(tmp_path)
    try:
        result = run(*[str(locked / "out") if a == "OUT" else a for a in args])
    finally:
        locked.chmod(0o755)
    assert_user_error(result, "permission denied")
    assert list(locked.iterdir()) == []


def test_writable_paths_pass_and_nothing_is_made(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    check_output_file(tmp_path / "new" / "deeper" / "x.jsonl", "--out")
    check_output_file(tmp_path / "afile", "--out")  # an existing file is replaced
    check_output_dir(tmp_path / "adir", "--run-dir")  # an existing run directory is resumed
    check_output_dir(tmp_path / "new" / "run", "--run-dir")
    check_output_file(None, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_a_link_into_proc_is_refused(tmp_path):
    (tmp_path / "link").symlink_to("/proc")
    with pytest.raises(PrunelabError, match="kernel file system"):
        check_output_file(tmp_path / "link" / "x.json", "--out")


def test_the_refusal_names_the_flag_and_the_fix(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PrunelabError) as caught:
        check_output_dir(tmp_path / "afile" / "sub", "--export-lmeval")
    assert "--export-lmeval" in caught.value.problem and "--export-lmeval" in caught.value.fix
