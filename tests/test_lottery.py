"""Lottery ticket (IMP with rewinding) as a recipe: rewind values, shrinking masks, final sparsity."""

import pytest
import torch

from prunekit.pipeline import STAGE_RUNNERS, run_pipeline
from prunekit.recipe import load_recipe, recipe_from_dict
from prunekit.data import load_dataset
from prunekit.errors import ConfigError


def _recipe(rewind: dict, rounds: int = 2, sparsity: float = 0.9):
    return recipe_from_dict({
        "name": "lottery-test", "model": {"name": "lenet300"}, "baseline": False,
        "data": {"name": "synthetic", "batch_size": 100, "options": {"n_train": 300, "n_test": 100, "image_size": 12}},
        "train": {"epochs": 2, "lr": 0.05},
        "stages": [{"train": {}}, {"repeat": {"times": rounds, "stages": [
            {"prune": {"criterion": "magnitude", "sparsity": sparsity}}, {"rewind": rewind}, {"train": {}}]}}],
    })


@pytest.fixture
def spy(monkeypatch):
    """Record model weights and masks right after every rewind stage."""
    seen = []
    original = STAGE_RUNNERS.get("rewind")

    def wrapped(ctx, stage, resume):
        original(ctx, stage, resume)
        seen.append({"model": {k: v.detach().clone() for k, v in ctx.model.state_dict().items()},
                     "masks": {k: v.clone() for k, v in ctx.masks.masks.items()},
                     "init": ctx.init_state, "snapshot": ctx.rewind_state})

    monkeypatch.setitem(STAGE_RUNNERS._entries, "rewind", wrapped)
    return seen


@pytest.mark.parametrize("rewind", [{"to": "init"}, {"to": "epoch", "epoch": 1}])
def test_lottery_rewinds_shrinks_masks_and_hits_target(tmp_path, spy, rewind):
    recipe = _recipe(rewind)
    data = load_dataset("synthetic", n_train=300, n_test=100, image_size=12)
    summary = run_pipeline(recipe, tmp_path, data, progress=False, log=lambda s: None)
    assert len(spy) == 2
    for rec in spy:
        target = rec["init"] if rewind["to"] == "init" else rec["snapshot"]
        assert target is not None
        for name, mask in rec["masks"].items():
            # kept entries hold exactly the rewind values, pruned entries are zero
            torch.testing.assert_close(rec["model"][name], target[name] * mask, atol=0, rtol=0)
    if rewind["to"] == "epoch":  # the snapshot is a trained state, not the init
        assert not torch.equal(spy[0]["snapshot"]["1.weight"], spy[0]["init"]["1.weight"])
    for before, after in zip(spy, spy[1:]):  # masks only shrink across rounds
        for name in before["masks"]:
            assert bool((after["masks"][name] <= before["masks"][name]).all())
            assert int(after["masks"][name].sum()) < int(before["masks"][name].sum())
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)


def test_rewind_epoch_needs_epoch_and_snapshot(tmp_path):
    with pytest.raises(ConfigError, match="epoch"):
        _recipe({"to": "epoch"})
    recipe = _recipe({"to": "epoch", "epoch": 5}, rounds=1)  # the first train stage has only 2 epochs
    data = load_dataset("synthetic", n_train=300, n_test=100, image_size=12)
    with pytest.raises(ConfigError, match="no snapshot"):
        run_pipeline(recipe, tmp_path, data, progress=False, log=lambda s: None)


def test_bundled_lottery_recipe_is_valid():
    from importlib.resources import files
    recipe = load_recipe(files("prunekit") / "recipes" / "lottery.yaml")
    kinds = [next(iter(s)) for s in recipe.stages]
    assert kinds == ["train", "repeat"]
