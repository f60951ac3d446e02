"""A new x-axis is one registered object: these toy ones, registered here alone, put a
recipe's points on their axis (planner and store), and the report titles, explains and
formats them, with no field name spelled out anywhere else."""

import pytest

from prunelab.errors import PrunelabError
from prunelab.report import build_report
from prunelab.study.axis import Axis, register_axis, unregister_axis
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.store import Store
from prunelab.study.testing import FakeBackend


def _kept(stages) -> float:
    return round(1.0 - (stages[0].sparsity or 0.0), 6)


KEPT = Axis("weights_kept", compute=_kept, is_amount=False, label="share of weights kept",
            section_title="What is left: relative performance by the share kept",
            section_text="The share of each matrix's weights that survive pruning.",
            table_title="Share kept")
REMOVED = Axis("share_removed", compute=lambda stages: stages[0].sparsity or 0.0,
               is_amount=True, format=lambda x: "–" if x is None else f"{x:.2f} removed")


@pytest.fixture
def toy_axes():
    register_axis(KEPT)
    register_axis(REMOVED)
    yield
    unregister_axis("weights_kept")
    unregister_axis("share_removed")


def _recipe(x: str):
    return parse_recipe({"name": "axis", "models": ["m"], "tasks": ["digits"],
                         "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.5, 0.7],
                                           "x": x}],
                         "eval": {"limit": 30}, "analysis": {"n_boot": 100}})


def test_a_computed_axis_that_is_not_an_amount_gets_its_own_section(tmp_path, toy_axes):
    run_study(_recipe("weights_kept"), tmp_path, backend=FakeBackend(), progress=False)
    with Store.in_dir(tmp_path) as store:
        pruned = [p for p in store.points() if p["method"] != "dense"]
    assert {p["x_field"] for p in pruned} == {"weights_kept"}
    assert sorted({p["x"] for p in pruned}) == [0.3, 0.5, 0.7]
    assert not any(p["x_is_amount"] for p in pruned)
    assert {p["arm"] for p in pruned} == {"magnitude"}  # the sparsity moves along x
    markdown = build_report(tmp_path)["md"].read_text()
    assert "## What is left: relative performance by the share kept" in markdown
    assert "The share of each matrix's weights that survive pruning." in markdown
    assert "### Share kept" in markdown and "| share of weights kept |" in markdown


def test_an_amount_axis_formats_its_values_in_the_tables(tmp_path, toy_axes):
    run_study(_recipe("share_removed"), tmp_path, backend=FakeBackend(), progress=False)
    markdown = build_report(tmp_path)["md"].read_text()
    assert "| 0.50 removed |" in markdown


def test_an_axis_name_taken_twice_is_refused(toy_axes):
    with pytest.raises(PrunelabError, match="already registered"):
        register_axis(KEPT)
