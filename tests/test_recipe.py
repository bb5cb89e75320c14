"""Recipes: defaults, key-path errors with did-you-mean, safe YAML, overrides, stage plans."""

import pytest
import yaml

from prunekit.errors import ConfigError
from prunekit.pipeline import plan_stages
from prunekit.recipe import apply_overrides, load_recipe, recipe_from_dict, recipe_to_yaml


def test_default_recipe_is_the_main_job():
    r = recipe_from_dict({})
    assert r.model.name == "lenet5" and r.data.name == "embedded" and r.baseline is True
    kinds = [s.kind for s in plan_stages(r)]
    assert kinds == ["prune", "train"]
    assert plan_stages(r)[0].settings.sparsity == 0.98 and plan_stages(r)[0].settings.criterion == "grasp"


@pytest.mark.parametrize("data, fragments", [
    ({"trian": {}}, ["trian: unknown key", "Did you mean 'train'"]),
    ({"train": {"epocs": 3}}, ["train.epocs", "Did you mean 'epochs'", "Allowed keys"]),
    ({"train": {"lr": "fast"}}, ["train.lr", "'fast'"]),
    ({"train": {"optimizer": "sgdd"}}, ["train.optimizer", "'sgd'"]),
    ({"stages": [{"prunee": {}}]}, ["stages[0]", "Did you mean 'prune'"]),
    ({"stages": [{"prune": {"sparsity": 90}}]}, ["stages[0].prune.sparsity", "outside [0, 1)"]),
    ({"stages": [{"prune": {"criterion": "magnitud"}}]}, ["criterion", "Did you mean 'magnitude'"]),
    ({"stages": [{"repeat": {"times": 2, "stages": [{"prune": {"alocation": "global"}}]}}]},
     ["stages[0].repeat.stages[0].prune.alocation", "Did you mean 'allocation'"]),
    ({"stages": [{"train": {"epochs": -1}}]}, ["stages[0].train.epochs"]),
])
def test_bad_recipes_name_the_key_and_the_fix(data, fragments):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(data)
    for f in fragments:
        assert f in str(err.value)


def test_bool_strings_parse_as_their_meaning():
    # the classic argparse/type=bool bug reads "False" as True; recipes must not
    assert recipe_from_dict({"baseline": "False"}).baseline is False
    assert recipe_from_dict({"baseline": "true"}).baseline is True
    with pytest.raises(ConfigError):
        recipe_from_dict({"baseline": "maybe"})


def test_yaml_round_trip_and_safe_loader(tmp_path):
    r = recipe_from_dict({"name": "x", "stages": [{"prune": {"sparsity": 0.5}}, "train"]})
    p = tmp_path / "r.yaml"
    p.write_text(recipe_to_yaml(r))
    assert recipe_to_yaml(load_recipe(p)) == recipe_to_yaml(r)
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(evil)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_overrides_set_nested_keys_and_stage_items():
    data = apply_overrides({"stages": [{"prune": None}, "train"]},
                           ["train.epochs=3", "stages.0.prune.sparsity=0.95", "stages.1.train.lr=0.01", "seed=7"])
    r = recipe_from_dict(data)
    assert r.train.epochs == 3 and r.seed == 7
    plan = plan_stages(r)
    assert plan[0].settings.sparsity == 0.95 and plan[1].settings.lr == 0.01 and plan[1].settings.epochs == 3
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_repeat_expands_into_rounds():
    r = recipe_from_dict({"stages": ["train", {"repeat": {"times": 3, "stages": ["prune", "rewind", "train"]}}]})
    plan = plan_stages(r)
    assert [s.kind for s in plan] == ["train"] + ["prune", "rewind", "train"] * 3
    assert [s.round for s in plan if s.kind == "prune"] == [1, 2, 3]
    assert all(s.rounds == 3 for s in plan[1:])
    assert [s.index for s in plan] == list(range(10))


def test_bundled_recipes_are_valid():
    from prunekit.cli import RECIPE_DIR

    for path in RECIPE_DIR.glob("*.yaml"):
        assert plan_stages(recipe_from_dict(yaml.safe_load(path.read_text())))
