"""The new methods' bad input from the command line: one line, exit 2, nothing written; and
their options in `prunelab methods` and in study recipes."""

import json

import pytest

from prunelab import engine
from prunelab.study.stages import parse_stage
from tests.cli_helpers import assert_user_error, run


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("Pruning removes weights from a network. " * 400)
    return path


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    unknown, skewed = folder / "unknown.json", folder / "skewed.yaml"
    unknown.write_text(json.dumps({"model.layers.0.mlp.nope": 0.5}))
    skewed.write_text("0: 0.9\n1: 0.6\n")
    return {"unknown": unknown, "skewed": skewed}


@pytest.mark.parametrize("args,fragment", [
    (["--method", "owl", "--sparsity", "0.9", "--option", "lam=0.2"], "outside [0, 1)"),
    (["--method", "owl", "--pattern", "2:4", "--option", "lam=0.45"], "N:M needs 1 to 3"),
    (["--method", "besa", "--sparsity", "0.5", "--option", "max_rate=0.4"],
     "outside its candidate sparsities"),
    (["--method", "besa", "--pattern", "2:4"], "does not support N:M"),
    (["--method", "sparsity-map", "--sparsity", "0.5"], "needs a map"),
    (["--method", "dsnot", "--sparsity", "0.5", "--option", "base=nope"], "unknown method"),
    (["--method", "gblm", "--sparsity", "0.5", "--option", "alpha=-1"], "alpha=-1.0"),
])
def test_bad_options_are_one_line_before_loading(tmp_path, args, fragment, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("prunelab.zoo.models.load_model", refuse)
    out = tmp_path / "out"
    assert_user_error(run("prune", "smollm2-135m", "--out", str(out), *args), fragment)
    assert not out.exists()


@pytest.mark.parametrize("which,fragment", [("unknown", "does not have"),
                                            ("skewed", "averages")])
def test_a_bad_sparsity_map_is_one_line_before_any_work(tmp_path, tiny_dir, text_file, maps,
                                                        which, fragment, monkeypatch):
    monkeypatch.setattr("prunelab.evaluate.perplexity.eval_windows",
                        lambda *a, **k: (_ for _ in ()).throw(
                            AssertionError("the dense perplexity was measured")))
    out = tmp_path / "out"
    result = run("prune", str(tiny_dir), "--out", str(out), "--method", "sparsity-map",
                 "--sparsity", "0.5", "--option", f"file={maps[which]}",
                 "--calib-source", str(text_file), "--seqlen", "32")
    assert_user_error(result, fragment)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_too_little_memory_for_gradients_is_one_line(tmp_path, tiny_dir, text_file,
                                                     monkeypatch):
    monkeypatch.setattr(engine, "_available_bytes", lambda device: 10_000)
    out = tmp_path / "out"
    result = run("prune", str(tiny_dir), "--out", str(out), "--method", "gblm",
                 "--sparsity", "0.5", "--calib-source", str(text_file), "--seqlen", "32",
                 "--no-ppl")
    assert_user_error(result, "one backward pass")
    assert not out.exists()


def test_a_method_on_a_base_from_the_cli(tmp_path, tiny_dir, text_file):
    out = tmp_path / "out"
    result = run("prune", str(tiny_dir), "--out", str(out), "--method", "owl",
                 "--option", "base=sparsegpt", "--option", "lam=0.1", "--sparsity", "0.6",
                 "--calib-source", str(text_file), "--calib-samples", "4", "--seqlen", "32",
                 "--no-ppl")
    assert result[0] == 0, result[2]
    meta = json.loads((out / "prunelab.json").read_text())["pruning"]
    assert meta["options"] == {"base": "sparsegpt", "m": 5.0, "lam": 0.1}
    targets = {layer["target_sparsity"] for layer in meta["layers"]}
    assert len(targets) == 2 and abs(sum(targets) / 2 - 0.6) < 1e-9


def test_the_methods_list_shows_the_new_methods_and_options():
    listing = run("methods")[1]
    for word in ("owl", "lam", "gblm", "dsnot", "max_cycles", "besa", "max_rate",
                 "wanda-variant", "random", "mask_seed", "sparsity-map", "file="):
        assert word in listing, word


def test_recipes_take_the_new_methods_and_report_their_problems():
    good = parse_stage({"kind": "prune", "method": "owl", "sparsity": 0.7,
                        "options": {"base": "sparsegpt", "lam": 0.08}})
    assert good.problems(None) == [] and good.needs_calibration()
    bad = parse_stage({"kind": "prune", "method": "owl", "sparsity": 0.7,
                       "options": {"lam": 0.4}})
    assert "outside [0, 1)" in bad.problems(None)[0]
    besa = parse_stage({"kind": "prune", "method": "besa", "sparsity": 0.5,
                        "options": {"min_rate": 0.6}})
    assert "candidate" in besa.problems(None)[0]
