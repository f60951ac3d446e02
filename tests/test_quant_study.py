"""Quantization in studies: the bits shorthand, one axis of bits removed per weight for
pruning and quantization, a prune-then-quantize chain, and the report's contrast."""

import pytest

from prunelab.report import build_report
from prunelab.study.axis import bits_removed_per_weight, stored_bits_per_weight
from prunelab.study.plan import compressions
from prunelab.study.recipe import load_recipe, parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.stages import parse_stage
from prunelab.study.testing import METHODS, FakeBackend


class QuantFakeBackend(FakeBackend):
    """The fake backend, with quantizers: b bits damage every level alike (fragility 1) as
    a sparsity of (8 - b) / 8 would, so the ordering holds for pruning only."""

    def check(self, recipe):
        saved = dict(METHODS)
        METHODS.update(rtn=1.0, gptq=0.8)
        try:
            return super().check(recipe)
        finally:
            METHODS.clear()
            METHODS.update(saved)

    def keep(self, point, fragility, model):
        if point is not None and any(s.method in ("rtn", "gptq") for s in point.stages):
            bits = point.stages[-1].options["bits"]
            return max(0.0, 1.0 - 0.5 * (8 - bits) / 8)
        return super().keep(point, fragility, model)


def _stage(**data):
    return parse_stage({"kind": "prune", **data})


def test_stored_bits_per_weight_prices_values_masks_and_grids():
    assert stored_bits_per_weight([]) == 16
    assert stored_bits_per_weight([_stage(method="wanda", sparsity=0.5)]) == 9
    assert stored_bits_per_weight([_stage(method="rtn", options={"bits": 4})]) == 4 + 20 / 128
    assert stored_bits_per_weight([_stage(method="gptq", options={
        "bits": 4, "group_size": 64, "symmetric": True})]) == 4 + 16 / 64
    chain = [_stage(method="wanda", sparsity=0.5),
             _stage(method="gptq", options={"bits": 4, "group_size": 64})]
    assert stored_bits_per_weight(chain) == 0.5 * 4 + 1 + 20 / 64
    joint = [_stage(method="sparsegpt", sparsity=0.5, options={"bits": 4, "group_size": 64})]
    assert stored_bits_per_weight(joint) == stored_bits_per_weight(chain)
    assert bits_removed_per_weight([_stage(method="wanda", sparsity=0.5)]) == 7


def test_the_recipe_puts_pruning_and_quantization_on_one_axis():
    recipe = load_recipe("recipes/prune-vs-quant.yaml")
    points = compressions(recipe, lambda stage: True)
    arms = {p.arm for p in points}
    assert {"wanda", "sparsegpt", "rtn group_size=64", "gptq group_size=64"} <= arms
    assert all(p.x_field == "bits_removed_per_weight" and p.x_is_amount for p in points)
    rtn = sorted(p.x for p in points if p.arm == "rtn group_size=64")
    assert rtn == [16 - (8 + 24 / 64), 16 - (4 + 20 / 64), 16 - (3 + 19 / 64)]
    chain = [p for p in points if len(p.stages) == 2]
    assert chain and chain[0].stages[1].method == "gptq"


def test_bits_without_x_sweep_the_bit_width():
    recipe = parse_recipe({"name": "q", "models": ["m"], "tasks": ["digits"],
                           "compressions": [{"method": "rtn", "bits": [8, 4]}]})
    points = compressions(recipe, lambda stage: False)
    assert [(p.arm, p.x, p.x_field) for p in points] == [
        ("rtn", 8.0, "stages[0].options.bits"), ("rtn", 4.0, "stages[0].options.bits")]


def test_a_method_without_sparsity_or_bits_is_still_an_empty_grid():
    with pytest.raises(Exception, match="nor bits"):
        parse_recipe({"name": "q", "models": ["m"], "tasks": ["digits"],
                      "compressions": [{"method": "rtn"}]})


def test_the_report_says_for_which_kind_the_ordering_holds(tmp_path):
    recipe = parse_recipe({
        "name": "pvq", "models": ["m"], "tasks": ["digits"],
        "compressions": [
            {"method": "wanda", "sparsity": [0.4, 0.6, 0.8], "x": "bits_removed_per_weight"},
            {"method": "rtn", "bits": [8, 4, 3, 2], "x": "bits_removed_per_weight"}],
        "eval": {"limit": 60}, "analysis": {"n_boot": 200}})
    run_study(recipe, tmp_path, backend=QuantFakeBackend(), progress=False)
    paths = build_report(tmp_path)
    text = open(paths["md"]).read()
    assert "Pruning against quantization" in text
    row = next(line for line in text.splitlines() if line.startswith("| m | digits |")
               and "pruning only" in line)
    assert "wanda: harder drops more" in row and "rtn: no evidence" in row
    assert "bits removed per weight" in text
