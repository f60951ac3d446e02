"""`prunelab --help`, every command's `--help` and every refusal of a bad argument answer
before torch or transformers is imported: checked in a fresh process, through `sys.modules`."""

import json
import subprocess
import sys

import pytest

from prunelab.cli import app

COMMANDS = sorted(command.name or command.callback.__name__.replace("_", "-")
                  for command in app.registered_commands)

# (arguments, a fragment of the one line on stderr); MODEL is never loaded
PRUNE = ["prune", "smollm2-135m", "--out", "OUT"]
QUANTIZE = ["quantize", "smollm2-135m", "--out", "OUT"]
REFUSALS = [
    (["no-such-command"], "No such command"),
    (["study"], "Missing argument 'recipe'"),
    (["study", "recipes/demo.yaml", "--no-such-option"], "No such option"),
    (["prune", "smollm2-135m"], "Missing option '--out'"),
    (["train-tiny", "gpt2", "--name", "x"], "cannot train a 'gpt2' model"),
    ([*PRUNE, "--sparsity", "half"], "Invalid value for '--sparsity'"),
    ([*PRUNE, "--calib-samples", "many"], "Invalid value for '--calib-samples'"),
    ([*PRUNE, "--sparsity", "1.5"], "sparsity 1.5 is outside [0, 1)"),
    ([*PRUNE, "--sparsity", "-0.1"], "is outside [0, 1)"),
    ([*PRUNE, "--pattern", "2-4"], "is not of the form N:M"),
    ([*PRUNE, "--pattern", "4:2"], "N must be at least 1 and below M"),
    ([*PRUNE, "--sparsity", "0.3", "--pattern", "2:4"], "disagrees with pattern 2:4"),
    ([*PRUNE], "no sparsity given"),
    ([*PRUNE, "--method", "wandda", "--sparsity", "0.5"], "unknown method 'wandda'"),
    ([*PRUNE, "--method", "sparsegpt", "--sparsity", "0.5", "--option", "percdam=0.1"],
     "has no option percdam"),
    ([*PRUNE, "--method", "sparsegpt", "--sparsity", "0.5", "--option", "percdamp=lots"],
     "is not a float"),
    ([*PRUNE, "--sparsity", "0.5", "--option", "percdamp"], "is not KEY=VALUE"),
    ([*PRUNE, "--sparsity", "0.5", "--option", "only=heads"], "cannot prune only 'heads'"),
    ([*PRUNE, "--method", "besa", "--pattern", "2:4"], "does not support N:M patterns"),
    ([*PRUNE, "--method", "rtn", "--sparsity", "0.5"], "quantizes weights and prunes none"),
    ([*PRUNE, "--sparsity", "0.5", "--calib-source", "no-such-text"], "unknown text source"),
    ([*PRUNE, "--sparsity", "0.5", "--calib-source", "missing/file.txt"], "does not exist"),
    ([*PRUNE, "--sparsity", "0.5", "--calib-source", "task:no-such-family"], "unknown task"),
    ([*PRUNE, "--sparsity", "0.5", "--calib-source", "task:synth_arithmetic?limit=100000"],
     "items left after the evaluation's"),
    ([*PRUNE, "--sparsity", "0.5", "--calib-samples", "0"], "at least one sample"),
    ([*PRUNE, "--sparsity", "0.5", "--seqlen", "1"], "is too short"),
    (["prune", "smollm2-135m", "--out", ".", "--sparsity", "0.5"], "already exists"),
    ([*QUANTIZE, "--group-size", "wide"], "option group_size='wide' of method gptq is not"),
    ([*QUANTIZE, "--group-size", "0"], "group size 0 is not a positive integer"),
    ([*QUANTIZE, "--bits", "four"], "Invalid value for '--bits'"),
    ([*QUANTIZE, "--bits", "5"], "5 bits is not supported"),
    ([*QUANTIZE, "--format", "gguf"], "unknown checkpoint format 'gguf'"),
    ([*QUANTIZE, "--method", "wanda"], "method wanda does not quantize"),
    ([*QUANTIZE, "--option", "bits=3"], "repeats a flag of `quantize`"),
    ([*QUANTIZE, "--option", "blocksize=big"], "is not an int"),
    (["ppl", "smollm2-135m", "--windows", "0"], "windows is too few"),
    (["ppl", "smollm2-135m", "--seqlen", "1"], "is too short"),
    (["ppl", "smollm2-135m", "--source", "no-such-text"], "unknown text source"),
    (["divergence", "a", "b", "--batch-size", "0"], "batch size 0 is not a positive integer"),
    (["refusal", "smollm2-135m", "--max-new-tokens", "0"], "must be 1 or more"),
    (["route", "smollm2-135m", "--families", "synth_arithmetic", "--sparsity", "0.2"],
     "two or more task families"),
    ([*PRUNE, "--sparsity", "0.5", "--dtype", "fp8"], "--dtype 'fp8' is not a precision"),
    ([*QUANTIZE, "--dtype", "float64"], "--dtype 'float64' is not a precision"),
    (["ppl", "smollm2-135m", "--dtype", "int8"], "--dtype 'int8' is not a precision"),
    (["eval", "smollm2-135m", "-t", "arithmetic", "--dtype", "half"], "is not a precision"),
    (["divergence", "a", "b", "--dtype", "bf8"], "--dtype 'bf8' is not a precision"),
    (["refusal", "smollm2-135m", "--dtype", "fp64"], "--dtype 'fp64' is not a precision"),
    (["study", "recipes/demo.yaml", "--dtype", "tf32"], "--dtype 'tf32' is not a precision"),
    (["transfer", "smollm2-135m", "--out", "OUT", "--setting", "dense", "--train-on", "x",
      "--dtype", "fp4"], "--dtype 'fp4' is not a precision"),
    (["route", "smollm2-135m", "--families", "a,b", "--sparsity", "0.2", "--dtype", "q"],
     "--dtype 'q' is not a precision"),
    (["route", "smollm2-135m", "--families", "synth_arithmetic,synth_options",
      "--sparsity", "0.2", "--option", "metric=L2"], "is not one of 'WIFV'"),
    (["route", "smollm2-135m", "--families", "synth_arithmetic,no-such-family",
      "--sparsity", "0.2"],
     "unknown task"),
    (["eval", "smollm2-135m", "--tasks", "no-such-task"], "unknown task"),
    (["tasks", "no-such-family"], "unknown task"),
    (["study", "no-such-recipe.yaml"], "no-such-recipe.yaml"),
    (["study", "recipes/demo.yaml", "--address", "10.0.0.1:6379"], "is for a Ray cluster"),
    (["study", "recipes/demo.yaml", "--executor", "dask"], "is not one of local, ray"),
    (["speed", "OUT"], "has no prunelab.json"),
    (["speed", "OUT", "--min-sparsity", "1.5"], "--min-sparsity 1.5 is not in [0, 1]"),
    (["speed", "OUT", "--decode-tokens", "0"], "--decode-tokens 0 is below 1"),
    (["export-gguf", "OUT", "--type", "Q5_K"], "unknown GGUF type 'Q5_K'"),
    (["export-gguf", "OUT"], "is not a directory"),
    (["export-gguf", "src", "--out", "src"], "is a directory, not a file"),
    ([*PRUNE, "--pattern", "2:32", "--format", "compact"], "stores N:M groups of at most 16"),
    ([*PRUNE, "--sparsity", "0.5", "--format", "compressed-tensors"],
     "prune writes --format dequantized or compact"),
    (["pack", "no/such/dir"], "is not a model directory"),
    (["pack", "recipes", "--layout", "zip"], "is not a model directory"),
    (["unpack", "no/such/dir"], "is not a model directory"),
]

# Runs every case in one fresh process, one after the other, and reports after each whether
# torch or transformers had been imported by then (the first case that imports them shows).
PROBE = """
import contextlib, io, json, sys
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
    report.append({"args": args, "code": code, "stderr": err.getvalue(),
                   "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)})
print(json.dumps(report))
"""


def _probe(cases: list[list[str]], cwd) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_prunelab_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, prunelab, prunelab.cli; "
                           "print('torch' in sys.modules, 'transformers' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_every_help_imports_no_torch(tmp_path):
    assert set(COMMANDS) >= {"prune", "quantize", "transfer", "transfer-encoder", "ppl", "eval",
                             "divergence", "refusal", "tasks", "study", "demo", "results",
                             "report", "models", "methods", "info", "route", "speed",
                             "export-gguf", "pack", "unpack"}
    report = _probe([["--help"], *([c, "--help"] for c in COMMANDS)], tmp_path)
    for case in report:
        assert case["code"] == 0, case
        assert case["heavy"] == [], f"{case['args']} imported {case['heavy']}"


def test_every_argument_refusal_is_one_line_and_imports_no_torch(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    cases = [[str(tmp_path / "out") if a == "OUT" else a for a in args] for args, _ in REFUSALS]
    report = _probe(cases, repo)
    for case, (_, fragment) in zip(report, REFUSALS, strict=True):
        lines = [line for line in case["stderr"].splitlines() if line.strip()]
        assert case["code"] == 2 and len(lines) == 1, case
        assert fragment in lines[0], (fragment, case)
        assert case["heavy"] == [], f"{case['args']} imported {case['heavy']}"


@pytest.mark.parametrize("flag", ["--help"])
def test_the_console_script_answers_help(flag):
    done = subprocess.run([sys.executable, "-m", "prunelab.cli", flag], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "prune" in done.stdout
