"""Task-specific calibration: a task's own prompts, from items its evaluation does not use."""

import pytest

from prunelab.tasks import calibration as tc
from prunelab.errors import PrunelabError
from prunelab.tasks.base import Item, Task
from prunelab.tasks.registry import register


def _task(level, n=40):
    items = [Item(id=f"q{i}", input=f"What is {i} plus {level}?", choices=(str(i + level), "x"),
                  gold=(0,)) for i in range(n)]
    return Task(name=f"calfam:{level}", family="calfam", axis="digits", level=level,
                level_rank=level - 1, kind="mc", loader=lambda: items)


@pytest.fixture(autouse=True)
def tasks():
    return [register(_task(1)), register(_task(2))]


def test_held_out_items_are_exactly_those_the_evaluation_does_not_select(tasks):
    pairs = tc.held_out("task:calfam?limit=30&seed=3")
    assert len(pairs) == 2 * 10
    for task in tasks:
        chosen = {it.id for it in task.select(30, 3)}
        mine = {it.id for t, it in pairs if t.name == task.name}
        assert mine.isdisjoint(chosen) and mine | chosen == {it.id for it in task.items}
    text = tc.task_text("task:calfam:2?limit=30&seed=3")
    chosen = {it.id for it in tasks[1].select(30, 3)}
    for item in tasks[1].items:
        assert (f"Q: {item.input}\nA:" in text) == (item.id not in chosen)
    assert "plus 1?" not in text  # one level selected


def test_too_few_items_left_is_refused():
    with pytest.raises(PrunelabError, match="0 items left after the evaluation's all items"):
        tc.check("task:calfam")
    with pytest.raises(PrunelabError, match="4 items left .* 38 items per level"):
        tc.check("task:calfam?limit=38")
    assert tc.check("task:calfam?limit=36") == 8
    for bad in ("task:", "task:calfam?limit=x", "task:calfam?limit=0", "task:calfam?shots=2"):
        with pytest.raises(PrunelabError):
            tc.parse(bad)
    with pytest.raises(PrunelabError, match="unknown task"):
        tc.check("task:no_such_family?limit=3")


def test_with_held_out_fills_in_the_evaluation_and_keeps_an_explicit_choice():
    assert tc.with_held_out("task:calfam", 30, 1) == "task:calfam?limit=30&seed=1"
    assert tc.with_held_out("task:calfam", None, 0) == "task:calfam?seed=0"
    assert tc.with_held_out("task:calfam?limit=5", 30, 1) == "task:calfam?limit=5"


def test_calibration_windows_from_a_task(tasks):
    from prunelab.data.corpora import CalibrationConfig, calibration_windows, load_text
    from prunelab.testing import tiny_loaded

    loaded = tiny_loaded("llama")
    source = "task:calfam?limit=20&seed=0"
    windows = calibration_windows(loaded, CalibrationConfig(source, n_samples=4, seqlen=64))
    assert windows.shape == (4, 64)
    text = load_text(source)
    assert text.count("Q: What is") == 40


def test_prune_cli_refuses_a_task_with_too_few_items(tmp_path):
    from tests.cli_helpers import assert_user_error, run
    from prunelab.testing import tiny_model, tiny_tokenizer

    model = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    out = tmp_path / "out"
    assert_user_error(run("prune", str(model), "--out", str(out), "--method", "wanda",
                           "--sparsity", "0.5", "--calib-source", "task:calfam?limit=39",
                           "--no-ppl"), "items left")
    assert not out.exists()
    ok = run("prune", str(model), "--out", str(out), "--method", "wanda", "--sparsity", "0.5",
             "--calib-source", "task:calfam?limit=10", "--calib-samples", "4", "--seqlen", "64",
             "--no-ppl")
    assert ok.returncode == 0, ok.stderr
    assert out.is_dir()


def test_study_resolves_task_calibration_against_its_evaluation():
    from prunelab.study.plan import compressions
    from prunelab.study.recipe import parse_recipe

    recipe = parse_recipe({
        "name": "cal", "models": ["smollm2-135m"], "tasks": ["calfam"],
        "compressions": [{"method": "wanda", "sparsity": [0.5],
                          "sweep": {"calibration.source": ["python-ref-a",
                                                           "task:calfam"],
                                    "calibration.n_samples": [8, 32]}}],
        "eval": {"limit": 30, "seed": 2}})
    points = compressions(recipe, lambda stage: True)
    sources = sorted({p.calibration[0]["source"] for p in points})
    assert sources == ["python-ref-a", "task:calfam?limit=30&seed=2"]
    assert len({p.arm for p in points}) == 4  # source x n_samples, one arm each


def test_study_check_lists_a_task_calibration_without_items_left():
    from prunelab.study.backend import PrunelabBackend
    from prunelab.study.recipe import parse_recipe

    recipe = parse_recipe({
        "name": "cal", "models": ["smollm2-135m"], "tasks": ["calfam"],
        "compressions": [{"method": "wanda", "sparsity": [0.5],
                          "calibration": {"source": "task:calfam"}}],
        "eval": {"limit": None}})
    problems = PrunelabBackend().check(recipe)
    assert any("items left" in problem for _, problem in problems), problems


def test_report_shows_the_calibration_effect_per_family_and_method(tmp_path):
    from prunelab.report import build_report
    from prunelab.study.calibration_effect import calibration_effects
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.runner import run_study
    from prunelab.study.store import Store
    from prunelab.study.testing import FakeBackend

    recipe = parse_recipe({
        "name": "cal", "models": ["fake"], "tasks": ["digits", "flat"],
        "compressions": [{"method": "wanda", "sparsity": [0.5, 0.7],
                          "sweep": {"calibration.source": ["python-ref-a",
                                                           "task:digits"]}}],
        "eval": {"limit": 60}, "analysis": {"n_boot": 200}})
    run_study(recipe, tmp_path / "run", backend=FakeBackend(), progress=False)
    with Store.in_dir(tmp_path / "run") as store:
        rows = calibration_effects(store.points(), store.examples, n_boot=200)
    by = {(r["family"], r["x"]): r for r in rows}
    assert set(by) == {("digits", 0.5), ("digits", 0.7), ("flat", 0.5), ("flat", 0.7)}
    for x in (0.5, 0.7):  # the fake halves the damage to the family calibrated on
        digits, flat = by[("digits", x)], by[("flat", x)]
        assert digits["source"] == "task:digits" and digits["reference"] == "python-ref-a"
        assert digits["effect"] > 0.05 and digits["ci"][0] > 0
        assert abs(flat["effect"]) < 1e-9 and flat["ci"][0] <= 0 <= flat["ci"][1]
    md = build_report(tmp_path / "run")["md"].read_text()
    assert "## Calibration source: effect per family and method" in md
    assert "| task:digits | python-ref-a |" in md
