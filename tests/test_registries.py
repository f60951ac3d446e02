"""Every registry refuses a name taken twice with one line (PrunelabError), and the kinds
know themselves: methods their cost, metrics whether they are binary."""

import dataclasses

import pytest

from prunelab.errors import PrunelabError


def test_a_method_name_taken_twice_is_refused():
    from prunelab.methods import register
    from prunelab.methods.registry import METHODS

    twin = type("Twin", (METHODS["wanda"],), {"name": "wanda"})
    with pytest.raises(PrunelabError, match="method named 'wanda' is already registered"):
        register(twin)
    assert METHODS["wanda"] is not twin


def test_a_metric_name_taken_twice_is_refused():
    from prunelab.evaluate.metrics import METRICS, ShareCorrect, register_metric

    with pytest.raises(PrunelabError, match="metric named 'accuracy' is already registered"):
        register_metric(ShareCorrect("accuracy", "again"))
    assert METRICS["accuracy"].description != "again"


def test_a_stage_kind_taken_twice_is_refused():
    from typing import Literal

    from prunelab.study.stages import STAGE_KINDS, Stage, register_stage

    class Again(Stage):
        kind: Literal["prune"] = "prune"

    with pytest.raises(PrunelabError, match="stage kind 'prune' is already registered"):
        register_stage(Again)
    assert STAGE_KINDS["prune"] is not Again


def test_a_measure_or_report_section_name_taken_twice_is_refused():
    from prunelab.report.sections import register_section
    from prunelab.study.measures import MEASURES, register_measure

    with pytest.raises(PrunelabError, match="measure named 'divergence'"):
        register_measure(type(MEASURES["divergence"]))
    import prunelab.report.core  # noqa: F401

    with pytest.raises(PrunelabError, match="section named 'verdicts'"):
        register_section(order=1, name="verdicts")(lambda run: None)


def test_the_refusal_is_one_line_with_a_fix():
    from prunelab.study.measures import MEASURES, register_measure

    with pytest.raises(PrunelabError) as caught:
        register_measure(type(MEASURES["perplexity"]))
    assert "\n" not in str(caught.value) and caught.value.fix


def test_metrics_say_whether_they_are_binary():
    from prunelab.evaluate.metrics import METRICS

    binary = {name for name, metric in METRICS.items() if metric.binary}
    assert binary == {"accuracy", "contains", "exact_match"}


def test_every_method_declares_its_cost_or_takes_the_documented_default():
    import prunelab.methods  # noqa: F401
    from prunelab.methods.base import MethodCost
    from prunelab.methods.registry import METHODS

    assert MethodCost() == MethodCost(passes=3.0, seconds_per_mparam=0.0)
    costs = {name: cls.cost for name, cls in METHODS.items()}
    assert all(isinstance(c, MethodCost) for c in costs.values())
    assert costs["wanda"].passes == 2.5 and costs["owl"].passes == 2.5  # owl: on top of base
    assert costs["sparsegpt"].seconds_per_mparam == costs["gptq"].seconds_per_mparam == 0.1
    assert costs["magnitude"] == MethodCost()
    assert dataclasses.is_dataclass(MethodCost)


def test_a_new_method_gets_the_default_cost_and_a_wrapper_adds_to_its_base():
    from prunelab.study.estimate import method_terms

    calibration = {"n_samples": 10, "seqlen": 100}
    unknown = method_terms("not-registered", {}, calibration, 1e-9, 100.0)
    assert unknown == [3.0 * 1000 * 1e-9]
    owl = method_terms("owl", {"base": "sparsegpt"}, calibration, 1e-9, 100.0)
    assert owl == [(2.5 + 3.0) * 1000 * 1e-9, 0.1 * 100.0]
    assert method_terms("wanda", {}, None, 1e-9, 100.0) == [0.06 * 100.0]
