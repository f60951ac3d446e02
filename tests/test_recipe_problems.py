"""Recipes that were accepted silently are refused in one error listing every problem (the
schema's and the checks' together, each with its YAML path); report.md makes raw HTML from
the data inert; random recipes never raise anything but a PrunelabError."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunelab.errors import PrunelabError
from prunelab.study.recipe import load_recipe, parse_recipe
from prunelab.study.runner import prepare, run_study
from prunelab.study.testing import FakeBackend

from cli_helpers import assert_user_error, run

GOOD = {"name": "ok", "models": ["m"], "tasks": ["digits"],
        "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]},
                         {"method": "wanda", "sparsity": [0.5]}],
        "eval": {"limit": 10}, "analysis": {"n_boot": 50}}


def _problems(data: dict, check=FakeBackend().check) -> str:
    """The one error's message: the schema first, then the backend's checks on a recipe the
    schema accepts."""
    with pytest.raises(PrunelabError) as caught:
        prepare(parse_recipe(data, check=check), FakeBackend())
    return caught.value.problem


def test_repeated_arms_are_refused_naming_both_entries():
    data = {**GOOD, "compressions": GOOD["compressions"] + [dict(GOOD["compressions"][1])]}
    assert "compressions[2]: repeats wanda 50%, already given by compressions[1]" in \
        _problems(data)
    # A point given twice by two different entries, or twice by one.
    overlap = {**GOOD, "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]},
                                        {"method": "magnitude", "sparsity": [0.6, 0.7]}]}
    assert "compressions[1]: repeats magnitude 60%, already given by compressions[0]" in \
        _problems(overlap)
    twice = {**GOOD, "compressions": [{"method": "magnitude", "sparsity": [0.5, 0.5]}]}
    assert "already given by itself" in _problems(twice)


def test_same_chain_on_another_axis_or_calibration_is_not_a_repeat():
    data = {**GOOD, "compressions": [
        {"method": "wanda", "sparsity": [0.5]},
        {"method": "wanda", "sparsity": [0.5], "calibration": {"n_samples": 16}},
        {"method": "wanda", "sparsity": [0.5], "x": "bits_removed_per_weight"}]}
    prepare(parse_recipe(data), FakeBackend())


@pytest.mark.parametrize("field, value, path", [
    ("seeds", [-1], "seeds[0]"), ("seeds", [0, 1, 0], "seeds"),
    ("models", ["m", "m"], "models"), ("tasks", ["digits", "flat", "digits"], "tasks"),
    ("eval", {"seed": -1}, "eval.seed")])
def test_negative_seeds_and_repeated_entries_are_refused(field, value, path):
    problem = _problems({**GOOD, field: value})
    assert problem.startswith("invalid recipe recipe: 1 problem: " + path), problem


def test_schema_and_check_problems_come_together():
    data = {**GOOD, "seeds": [-1], "tasks": ["digits", "no-such-family"],
            "compressions": [{"method": "nosuch", "sparsity": [1.5]},
                             {"method": "wanda", "sparsity": [0.5]},
                             {"method": "wanda", "sparsity": [0.5]}]}
    problem = _problems(data)
    for part in ("compressions[0].sparsity[0]: Input should be less than 1",
                 "seeds[0]: Input should be greater than or equal to 0",
                 "compressions[0].method: unknown method 'nosuch'",
                 "tasks[1]: unknown task 'no-such-family'",
                 "compressions[2]: repeats wanda 50%"):
        assert part in problem, problem
    assert "5 problems" in problem


def test_the_cli_lists_every_problem_of_a_recipe_file_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "models": ["smollm2-135m"],
                                    "tasks": ["synth_arithmetic"], "seeds": [-1],
                                    "compressions": [{"method": "nosuch",
                                                      "sparsity": [1.5]}]}))
    result = run("study", str(path), "--dry-run")
    assert_user_error(result, "3 problems")
    assert "unknown method 'nosuch'" in result.stderr
    assert "seeds[0]" in result.stderr and "compressions[0].sparsity[0]" in result.stderr


def test_a_stand_in_for_a_refused_required_field_reports_nothing_of_its_own():
    problem = _problems({**GOOD, "models": "not-a-list", "tasks": [3]})
    assert "models:" in problem and "tasks[0]:" in problem
    assert "stand-in" not in problem


# -- report.md: raw HTML from the data is inert ------------------------------------------------

SCRIPT = "<script>alert(1)</script>"


def test_report_md_escapes_html_from_the_data(tmp_path):
    from prunelab.report import build_report

    recipe = parse_recipe({**GOOD, "models": [f"m{SCRIPT}"]})
    run_study(recipe, tmp_path, backend=FakeBackend(), progress=False)
    build_report(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    # The recipe is shown verbatim inside a code fence, where Markdown renders no HTML.
    rendered = markdown.split("```yaml")[0]
    assert "<script" not in rendered.lower()
    assert "| m&lt;script>alert(1)&lt;/script> |" in rendered  # in tables
    assert "![m&lt;script>alert(1)&lt;/script>:" in rendered  # in a figure's caption
    html = (tmp_path / "report.html").read_text()
    assert SCRIPT not in html


def test_report_md_keeps_comparisons_and_fences_code():
    from prunelab.report.render import Section, Table, to_markdown

    section = Section("s", text=["p < 0.05 and <b>x</b>"],
                      tables=[Table("t", ["a"], [["<img src=x>"]])],
                      pre="description: |\n  ```\n  <script>\n")
    markdown, _ = to_markdown("title", [section], "img")
    assert "p < 0.05 and &lt;b>x&lt;/b>" in markdown
    assert "&lt;img src=x>" in markdown
    assert "````yaml" in markdown  # longer than the three backticks inside


# -- property-based: any structure, never a traceback, never accepted when invalid -------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
sparsities = st.lists(st.one_of(st.floats(-1, 2), st.just(0.5), scalars),
                      max_size=3)
compressions = st.fixed_dictionaries(
    {"method": st.one_of(st.sampled_from(["magnitude", "wanda", "nosuch"]), scalars)},
    optional={"sparsity": sparsities, "patterns": st.lists(st.one_of(
        st.sampled_from(["2:4", "4:2", "x"]), scalars), max_size=2), "options": values,
              "sweep": values, "x": scalars, "stages": values})
recipes = st.fixed_dictionaries(
    {}, optional={"name": st.one_of(st.just("ok"), scalars),
                  "models": st.one_of(st.lists(st.sampled_from(["m", "n"]), max_size=3), values),
                  "tasks": st.one_of(st.lists(st.sampled_from(["digits", "flat", "nope"]),
                                              max_size=3), values),
                  "compressions": st.one_of(st.lists(compressions, max_size=3), values),
                  "seeds": st.one_of(st.lists(st.integers(-2, 2), max_size=3), values),
                  "eval": st.one_of(st.fixed_dictionaries({}, optional={
                      "limit": scalars, "seed": scalars, "batch_size": scalars}), values),
                  "calibration": values, "analysis": values, "band_probe": values,
                  "perplexity": values, "bogus": values})


def _valid_by_hand(recipe) -> bool:
    """What a valid recipe must be, checked independently of the parser."""
    seeds = recipe.seeds
    return (len(set(recipe.models)) == len(recipe.models) and recipe.models
            and len(set(recipe.tasks)) == len(recipe.tasks) and recipe.tasks
            and len(set(seeds)) == len(seeds) and all(s >= 0 for s in seeds)
            and all(0 <= s < 1 and math.isfinite(s) for c in recipe.compressions
                    for s in c.sparsity))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipes, st.one_of(st.just(GOOD), st.none()))
def test_random_recipes_are_refused_or_sound_never_a_traceback(data, base):
    data = {**(base or {}), **data}
    backend = FakeBackend()
    try:
        recipe = parse_recipe(data, check=backend.check)
        prepare(recipe, backend)
    except PrunelabError as exc:
        assert str(exc).strip() and "\n" not in exc.problem
        return
    assert _valid_by_hand(recipe)
    for c in recipe.compressions:  # every accepted method is one the backend knows
        assert c.method in (None, "magnitude", "wanda")
