"""Recipes: YAML <-> typed config one to one, overrides, and every problem reported at once."""

import pytest
import yaml

from prunelab.errors import PrunelabError
from prunelab.study.demo import DEMO_YAML, demo_recipe
from prunelab.study.recipe import Recipe, load_recipe, parse_recipe

GOOD = {"name": "t", "models": ["smollm2-135m"], "tasks": ["digits"],
        "compressions": [{"method": "wanda", "sparsity": [0.5], "patterns": ["2:4"]}]}


def test_round_trip_is_one_to_one(tmp_path):
    recipe = parse_recipe(GOOD)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(path)
    assert again == recipe
    assert again.fingerprint() == recipe.fingerprint()
    # Every field of the dump is a key the schema accepts (nothing invented, nothing lost;
    # a later measure section is left out while absent).
    from prunelab.study.recipe import LATER_SECTIONS

    assert set(yaml.safe_load(recipe.to_yaml())) == set(Recipe.model_fields) - set(
        LATER_SECTIONS) - {"dtype", "model_dtypes"}  # at their defaults: left out too
    bf16 = parse_recipe({**GOOD, "dtype": "bf16"})
    assert yaml.safe_load(bf16.to_yaml())["dtype"] == "bf16"
    assert bf16.fingerprint() != recipe.fingerprint()
    given = parse_recipe({**GOOD, "physical_account": {}})
    assert "physical_account" in yaml.safe_load(given.to_yaml())
    assert given.fingerprint() != recipe.fingerprint()


def test_every_problem_is_listed_with_its_path():
    bad = {"name": "t", "models": [], "tasks": ["digits"], "colour": "red",
           "compressions": [{"method": "wanda", "sparsity": [0.5]},
                            {"method": "magnitude", "sparsity": [0.2, 0.5, 1.2]},
                            {"method": "sparsegpt"}],
           "eval": {"limit": "many"}}
    with pytest.raises(PrunelabError) as err:
        parse_recipe(bad, "bad.yaml")
    msg = str(err.value)
    assert "5 problems" in msg
    for path in ("colour: unknown key", "models:", "compressions[1].sparsity[2]:",
                 "compressions[2]: gives neither", "eval.limit:"):
        assert path in msg, path
    assert "\n" not in msg


def test_empty_grid_and_band_probe_overflow():
    with pytest.raises(PrunelabError, match="nothing to compare"):
        parse_recipe({**GOOD, "compressions": []})
    recipe = parse_recipe({**GOOD, "compressions": [], "band_probe": {"starts": [0, 0.5]}})
    assert recipe.band_probe.width == 0.1
    with pytest.raises(PrunelabError, match=r"band_probe: .*go past 1"):
        parse_recipe({**GOOD, "band_probe": {"starts": [0.95]}})


def test_overrides_change_fields_and_reject_bad_paths():
    recipe = parse_recipe(GOOD, overrides=["eval.limit=7", "compressions[0].sparsity=[0.3, 0.6]",
                                           "seeds=[1, 2]", "calibration.n_samples=16"])
    assert recipe.eval.limit == 7 and recipe.seeds == [1, 2]
    assert recipe.compressions[0].sparsity == [0.3, 0.6]
    assert recipe.calibration.n_samples == 16
    with pytest.raises(PrunelabError, match="does not exist"):
        parse_recipe(GOOD, overrides=["compressions[3].sparsity=[0.5]"])
    with pytest.raises(PrunelabError, match="PATH=VALUE"):
        parse_recipe(GOOD, overrides=["eval.limit"])
    with pytest.raises(PrunelabError, match="not valid YAML"):
        parse_recipe(GOOD, overrides=["compressions[0].sweep={stages[2].sparsity: [0.5]}"])
    swept = parse_recipe(GOOD, overrides=['compressions[0].sweep={"options.percdamp": [0.1]}'])
    assert swept.compressions[0].sweep == {"options.percdamp": [0.1]}
    with pytest.raises(PrunelabError, match=r"eval.limit: .*greater than or equal to 1"):
        parse_recipe(GOOD, overrides=["eval.limit=0"])


def test_bad_files(tmp_path):
    with pytest.raises(PrunelabError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(PrunelabError, match="not valid YAML"):
        load_recipe(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(PrunelabError, match="must be a mapping"):
        load_recipe(listy)


def test_recipe_files_in_repo_are_valid_and_demo_matches(repo_root=None):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    assert (root / "demo.yaml").read_text() == DEMO_YAML
    for path in root.glob("*.yaml"):
        load_recipe(path)
    demo = demo_recipe()
    assert {c.method for c in demo.compressions} == {"magnitude", "wanda", "sparsegpt"}
