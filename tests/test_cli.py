"""Bad input gives one line, exit status 2, no traceback and no partial output."""

import json
import subprocess
import sys

import pytest

from tests.cli_helpers import assert_user_error, run


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prunelab.cli", "ppl", "no-such-model"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "unknown model" in result.stderr


@pytest.mark.parametrize("args,fragment", [
    (["study", "recipes/demo.yaml", "--no-such-option"], "No such option: --no-such-option"),
    (["--no-such-option"], "No such option"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["study"], "Missing argument 'recipe': see `prunelab study --help`"),
    (["prune", "smollm2-135m", "--sparsity", "half"], "Invalid value for '--sparsity'"),
])
def test_argument_parsing_errors_are_one_line_too(args, fragment):
    # typer 0.2x raises its own copy of click's exceptions: neither a traceback nor click's
    # multi-line usage block may reach the user
    assert_user_error(run(*args), fragment)


def test_a_study_device_that_is_not_here_is_one_line(tmp_path):
    import torch

    assert_user_error(run("study", "recipes/transfer-quick.yaml", "--run-dir",
                          str(tmp_path / "run"), "--device", "nonsense"), "not a torch device")
    if not torch.cuda.is_available():
        assert_user_error(run("study", "recipes/transfer-quick.yaml", "--run-dir",
                              str(tmp_path / "run"), "--device", "cuda"), "sees no CUDA GPU")
    assert not (tmp_path / "run").exists()


def test_the_transfer_commands_check_their_device_before_loading(tmp_path):
    import torch

    out = tmp_path / "out"
    decoder = ("transfer", "no-such-model", "--out", str(out), "--setting", "dense",
               "--train-on", "synth_arithmetic:1")
    assert_user_error(run(*decoder, "--device", "nonsense"), "not a torch device")
    assert_user_error(run("transfer-encoder", "no-such-model", "--setting", "dense",
                          "--device", "nonsense"), "not a torch device")
    if not torch.cuda.is_available():
        assert_user_error(run(*decoder, "--device", "cuda"), "sees no CUDA GPU")
    assert not out.exists()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("Pruning removes weights from a network. " * 400)
    return path


@pytest.mark.parametrize("args,fragment", [
    (["--method", "nope", "--sparsity", "0.5"], "unknown method"),
    (["--sparsity", "1.2"], "outside [0, 1)"),
    (["--sparsity", "-0.1"], "outside [0, 1)"),
    (["--pattern", "4:4"], "N must be at least 1 and below M"),
    (["--pattern", "2:7"], "does not divide the input width"),
    (["--sparsity", "0.5", "--seqlen", "100000"], "longer than the model's context"),
    (["--sparsity", "0.5", "--calib-samples", "0"], "at least one sample"),
    (["--sparsity", "0.5", "--option", "alpha=1"], "no option alpha"),
    ([], "no sparsity given"),
])
def test_prune_bad_input(tmp_path, tiny_dir, text_file, args, fragment):
    out = tmp_path / "out"
    result = run("prune", str(tiny_dir), "--out", str(out), "--calib-source", str(text_file),
                 "--seqlen", "64", "--no-ppl", *args)
    assert_user_error(result, fragment)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_too_little_calibration_text(tmp_path, tiny_dir):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    out = tmp_path / "out"
    result = run("prune", str(tiny_dir), "--out", str(out), "--sparsity", "0.5",
                 "--calib-source", str(short), "--seqlen", "64", "--no-ppl")
    assert_user_error(result, "fewer than one window")
    assert not out.exists()


def test_missing_model_and_unknown_name(tmp_path):
    assert_user_error(run("ppl", str(tmp_path / "nothing/here")), "does not exist")
    assert_user_error(run("ppl", "no-such-model"), "unknown model")
    assert_user_error(run("info", str(tmp_path)), "has no prunelab.json")


def test_prune_then_info_then_plain_transformers_load(tmp_path, tiny_dir, text_file):
    out = tmp_path / "pruned"
    result = run("prune", str(tiny_dir), "--out", str(out), "--method", "sparsegpt",
                 "--pattern", "2:4", "--calib-source", str(text_file), "--calib-samples", "4",
                 "--seqlen", "64", "--no-ppl")
    assert result.returncode == 0, result.stderr
    assert "achieved sparsity 0.5000" in result.stdout
    meta = json.loads((out / "prunelab.json").read_text())
    assert meta["pruning"]["method"] == "sparsegpt" and meta["pruning"]["pattern"] == "2:4"
    assert meta["pruning"]["calibration"]["n_samples"] == 4
    assert len(meta["pruning"]["calibration"]["tokens_sha256"]) == 16
    assert {"torch", "transformers", "prunelab"} <= set(meta["versions"])
    assert all(layer["achieved_sparsity"] == 0.5 for layer in meta["pruning"]["layers"])
    assert list(out.glob("*.safetensors"))

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out)
    weight = plain.model.layers[0].mlp.down_proj.weight
    assert ((weight != 0).view(weight.shape[0], -1, 4).sum(-1) <= 2).all()

    info = run("info", str(out))
    assert info.returncode == 0 and "sparsegpt" in info.stdout and "down_proj" in info.stdout
    again = run("prune", str(tiny_dir), "--out", str(out), "--sparsity", "0.5", "--no-ppl")
    assert_user_error(again, "already exists")


def test_methods_and_models_list():
    methods = run("methods")
    assert methods.returncode == 0
    for name in ("magnitude", "magnitude-global", "wanda", "sparsegpt", "percdamp"):
        assert name in methods.stdout
    listing = run("models")
    assert listing.returncode == 0 and "smollm2-135m" in listing.stdout
    assert "dequantized" in listing.stdout


def test_a_bad_allocator_setting_is_one_line(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_MMAP_THRESHOLD", "lots")
    out = tmp_path / "out"
    assert_user_error(run("prune", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.5", "--no-ppl",
                           "--out", str(out)), "PRUNELAB_MMAP_THRESHOLD")
    assert not out.exists()


def _refuse(monkeypatch, target: str, what: str) -> None:
    """Make `target` fail with a user error naming `what`, so that reaching it shows."""
    from prunelab.errors import PrunelabError

    def refuse(*args, **kwargs):
        raise PrunelabError(what)

    monkeypatch.setattr(target, refuse)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model would answer with a different error: the argument's error must win."""
    _refuse(monkeypatch, "prunelab.zoo.models.load_model", "the model was loaded")


@pytest.mark.parametrize("args,fragment", [
    (["--sparsity", "1.5"], "outside [0, 1)"),
    (["--pattern", "4:2"], "N must be at least 1 and below M"),
    (["--pattern", "two:four"], "not of the form N:M"),
    (["--pattern", "2:4", "--sparsity", "0.3"], "disagrees with pattern"),
    (["--method", "magnitude-band", "--pattern", "2:4"], "does not support N:M"),
    (["--method", "nope", "--sparsity", "0.5"], "unknown method"),
    (["--sparsity", "0.5", "--option", "alpha=1"], "no option alpha"),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--option", "percdamp=lots"], "is not a float"),
    (["--sparsity", "0.5", "--option", "percdamp"], "is not KEY=VALUE"),
    (["--sparsity", "0.5", "--calib-source", "no-such-corpus"], "unknown text source"),
    (["--sparsity", "0.5", "--calib-source", "/no/such/calib.txt"], "does not exist"),
    (["--sparsity", "0.5", "--calib-samples", "0"], "at least one sample"),
    (["--sparsity", "0.5", "--seqlen", "1"], "too short"),
    ([], "no sparsity given"),
])
def test_prune_argument_errors_come_before_loading_the_model(tmp_path, no_model_load, args,
                                                             fragment):
    out = tmp_path / "out"
    result = run("prune", "smollm2-135m", "--out", str(out), *args)
    assert_user_error(result, fragment)
    assert not out.exists()


def test_calibration_file_must_be_nonempty_utf8_text(tmp_path, no_model_load):
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_text("  \n")
    binary.write_bytes(b"\xff\xfe\x00 not text")
    for path, fragment in ((empty, "is empty"), (binary, "not UTF-8")):
        result = run("prune", "smollm2-135m", "--out", str(tmp_path / "out"), "--sparsity", "0.5",
                     "--calib-source", str(path))
        assert_user_error(result, fragment)
    existing = tmp_path / "exists"
    existing.mkdir()
    assert_user_error(run("prune", "smollm2-135m", "--out", str(existing), "--sparsity", "0.5"),
                       "already exists")


def test_a_bad_allocator_setting_comes_before_loading(tmp_path, no_model_load, monkeypatch):
    monkeypatch.setenv("PRUNELAB_MMAP_THRESHOLD", "lots")
    assert_user_error(run("prune", "smollm2-135m", "--out", str(tmp_path / "out"),
                           "--sparsity", "0.5"), "PRUNELAB_MMAP_THRESHOLD")


@pytest.fixture
def no_dense_perplexity(monkeypatch):
    _refuse(monkeypatch, "prunelab.evaluate.perplexity.eval_windows",
            "the dense perplexity was measured")


@pytest.mark.parametrize("args,fragment", [
    (["--pattern", "2:7"], "does not divide the input width"),
    (["--sparsity", "0.5", "--seqlen", "100000"], "longer than the model's context"),
])
def test_model_dependent_errors_come_before_the_dense_perplexity(tmp_path, tiny_dir, text_file,
                                                                 no_dense_perplexity, args,
                                                                 fragment):
    out = tmp_path / "out"
    result = run("prune", str(tiny_dir), "--out", str(out), "--calib-source", str(text_file),
                 "--seqlen", "64", *args)
    assert_user_error(result, fragment)
    assert not out.exists()


def test_too_little_calibration_text_comes_before_the_dense_perplexity(tmp_path, tiny_dir,
                                                                       no_dense_perplexity):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    result = run("prune", str(tiny_dir), "--out", str(tmp_path / "out"), "--sparsity", "0.5",
                 "--calib-source", str(short), "--seqlen", "64")
    assert_user_error(result, "fewer than one window")


def test_dense_perplexity_is_cached_between_runs(tmp_path, tiny_dir, text_file, isolated_home,
                                                 monkeypatch):
    from prunelab.data import corpora

    def small_windows(loaded, source, seqlen, n_windows):
        return corpora.eval_windows(loaded, text_file, 32, 2)

    monkeypatch.setattr("prunelab.evaluate.perplexity.eval_windows", small_windows)
    common = ["--method", "magnitude", "--sparsity", "0.5", "--calib-source", str(text_file)]
    first = run("prune", str(tiny_dir), "--out", str(tmp_path / "a"), *common)
    assert first.returncode == 0, first.stderr
    assert "dense" in first.stdout and "(cached)" not in first.stdout
    second = run("prune", str(tiny_dir), "--out", str(tmp_path / "b"), *common)
    assert second.returncode == 0, second.stderr
    assert "(cached)" in second.stdout
    dense = [json.loads((tmp_path / d / "prunelab.json").read_text())["perplexity"]["dense"]
             for d in "ab"]
    assert dense[0] == dense[1]


def test_no_module_imports_the_cli_back():
    """prunelab.cli imports the subsystems' CLIs; an import back would be a cycle."""
    import ast
    from pathlib import Path

    import prunelab

    root = Path(prunelab.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if (root / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "prunelab.cli" or n.startswith("prunelab.cli.") for n in names if n):
                offenders.append(str(path.relative_to(root)))
    assert not offenders, offenders


def test_ppl_checks_its_arguments_first_and_caches(tmp_path, tiny_dir, text_file, isolated_home,
                                                   monkeypatch):
    small = ["--source", str(text_file), "--seqlen", "32", "--windows", "2"]
    first = run("ppl", str(tiny_dir), *small)
    assert first.returncode == 0, first.stderr
    assert "perplexity" in first.stdout and "(cached)" not in first.stdout
    second = run("ppl", str(tiny_dir), *small)
    assert "(cached)" in second.stdout
    assert first.stdout.split()[1] == second.stdout.split()[1]
    from prunelab.errors import PrunelabError

    def refuse(*args, **kwargs):
        raise PrunelabError("the model was loaded")

    monkeypatch.setattr("prunelab.zoo.models.load_model", refuse)
    for args, fragment in ((["--windows", "0"], "too few"), (["--seqlen", "1"], "too short"),
                           (["--source", "no-such-text"], "unknown text source")):
        assert_user_error(run("ppl", str(tiny_dir), *args), fragment)
