"""A new study measure is one file: this toy one, registered here alone, runs through the fake
backend, the store, the dry run's estimate, the tidy export and the report (HTML and
Markdown) without any other file knowing about it."""

import pytest
from pydantic import BaseModel, ConfigDict, Field

from prunelab.errors import PrunelabError
from prunelab.report import build_report
from prunelab.report.sections import Section, Table
from prunelab.study.export import table
from prunelab.study.measures import Measure, register_measure, unregister_measure
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import dry_run, run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


class SparsityEcho(Measure):
    """Echoes each compressed model's sparsity, scaled: a measure whose answer is known."""

    name = "sparsity_echo"
    recipe_field = "sparsity_echo"
    section = Echo
    on_dense = False
    report_order = 115

    def run(self, backend, handle, config, work=None):
        return {"echo": config.scale * handle.point.first["sparsity"], "unit": "sparsity"}

    def cost(self, recipe, config, point, per_token, params, task=None):
        return 1000.0

    def report(self, run):
        rows = [[c["model"], f"{c['sparsity_echo']['echo']:.2f}"] for c in run.compressions
                if c.get("sparsity_echo")]
        return [Section("Sparsity echo", ["Each compressed model's sparsity, scaled."],
                        [Table("Echoes", ["model", "echo"], rows)])] if rows else []


RECIPE = {"name": "toy", "models": ["m"], "tasks": ["digits"],
          "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]}],
          "eval": {"limit": 20}, "analysis": {"n_boot": 100}}


@pytest.fixture
def toy_measure():
    register_measure(SparsityEcho)
    yield
    unregister_measure("sparsity_echo")


def test_a_measure_registered_alone_runs_stores_exports_and_reports(tmp_path, toy_measure):
    recipe = parse_recipe({**RECIPE, "sparsity_echo": {"scale": 2.0}})
    plain = parse_recipe(RECIPE)
    assert recipe.fingerprint() != plain.fingerprint()
    assert "sparsity_echo" not in plain.to_yaml()  # recipes without it keep their form
    assert dry_run(recipe, FakeBackend())["pending_points"] == 12

    run_study(recipe, tmp_path, backend=FakeBackend(), progress=False)
    with Store.in_dir(tmp_path) as store:
        rows = {c["config"]["stages"][0]["sparsity"] if c["config"]["stages"] else 0.0:
                c["sparsity_echo"] for c in store.compressions()}
    assert rows == {0.0: None, 0.3: {"echo": 0.6, "unit": "sparsity"},
                    0.6: {"echo": 1.2, "unit": "sparsity"}}

    exported = [r for r in table(tmp_path, "measures") if r["measure"] == "sparsity_echo"]
    assert sorted((r["field"], r["value"]) for r in exported) == [
        ("echo", 0.6), ("echo", 1.2), ("unit", "sparsity"), ("unit", "sparsity")]

    paths = build_report(tmp_path)
    markdown = paths["md"].read_text()
    assert "## Sparsity echo" in markdown and "| m | 1.20 |" in markdown
    # placed at its order: after the compressed models, before the recipe
    assert (markdown.index("## Compressed models") < markdown.index("## Sparsity echo")
            < markdown.index("## Recipe and versions"))
    assert "<h2>Sparsity echo</h2>" in paths["html"].read_text()
    assert "sparsity_echo:\n  scale: 2.0" in (tmp_path / "recipe.yaml").read_text()


def test_a_measure_prices_itself_in_the_real_estimate(toy_measure):
    from prunelab.study.estimate import rough_estimate
    from prunelab.study.plan import compressions

    recipe = parse_recipe({**RECIPE, "sparsity_echo": {}})
    point = compressions(recipe, lambda stage: False)[0]
    with_echo = rough_estimate(recipe, "smollm2-135m", point, [])[0]
    assert with_echo - rough_estimate(parse_recipe(RECIPE), "smollm2-135m", point, [])[0] \
        == pytest.approx(1000.0)


def test_its_section_is_validated_and_a_second_registration_refused(toy_measure):
    with pytest.raises(PrunelabError, match=r"sparsity_echo.scale"):
        parse_recipe({**RECIPE, "sparsity_echo": {"scale": 0}})
    with pytest.raises(PrunelabError, match="already registered"):
        register_measure(SparsityEcho)


def test_without_the_measure_its_section_is_an_unknown_key():
    with pytest.raises(PrunelabError, match="sparsity_echo: unknown key"):
        parse_recipe({**RECIPE, "sparsity_echo": {"scale": 2.0}})


def test_a_run_made_with_a_measure_no_longer_registered_is_refused_in_one_line(tmp_path):
    from prunelab.study.runner import read_run

    register_measure(SparsityEcho)
    try:
        run_study(parse_recipe({**RECIPE, "sparsity_echo": {}}), tmp_path,
                  backend=FakeBackend(), progress=False)
    finally:
        unregister_measure("sparsity_echo")
    with pytest.raises(PrunelabError, match=r"does not validate here \(sparsity_echo\)"):
        read_run(tmp_path)
