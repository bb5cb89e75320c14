"""Gradual polynomial pruning: the sparsity follows the schedule, then the mask is frozen; resume is exact."""

import json
import math

import pytest
import torch
from torch import nn

from prunekit.cli import recipe_data
from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.pipeline import run_pipeline
from prunekit.recipe import SparsifyConfig, apply_overrides, recipe_from_dict
from prunekit.schedules import SparsifyEnv, build_sparsify_hooks, is_update_step, polynomial_sparsity


def test_polynomial_schedule_known_values():
    assert polynomial_sparsity(0, 10, 50, 0.0, 0.9) == 0.0
    assert polynomial_sparsity(10, 10, 50, 0.0, 0.9) == 0.0
    assert polynomial_sparsity(30, 10, 50, 0.0, 0.9) == pytest.approx(0.9 - 0.9 * 0.5**3)  # Zhu & Gupta Eq. 1
    assert polynomial_sparsity(50, 10, 50, 0.0, 0.9) == 0.9
    assert polynomial_sparsity(500, 10, 50, 0.0, 0.9) == 0.9
    assert polynomial_sparsity(30, 10, 50, 0.2, 0.8, power=1) == pytest.approx(0.5)
    assert [s for s in range(60) if is_update_step(s, 10, 50, 15)] == [10, 25, 40, 50]


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


GROUP = {"weight": 1, "window": 1, "kernel": 9, "window_kernel": 9, "channel": 72}


@pytest.mark.parametrize("structure", list(GROUP))
def test_sparsity_at_each_update_equals_the_schedule_and_mask_freezes(structure):
    model = convnet()
    masks = MaskSet.from_model(model, types=["conv"])
    env = SparsifyEnv(model, masks, None, torch.device("cpu"), 0, steps_per_epoch=10, total_steps=60)
    cfg = SparsifyConfig(method="gradual", sparsity=0.8, start_epoch=1, end_epoch=4, every=5, structure=structure)
    (hook,) = build_sparsify_hooks(cfg, env, epochs=6)
    g = torch.Generator().manual_seed(0)
    previous, frozen = {n: m.clone() for n, m in masks.masks.items()}, None
    for step in range(1, 61):
        with torch.no_grad():  # stand-in for training: weights drift, so rankings change
            for p in masks.params.values():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        masks.apply()
        hook(None, step)
        for n in masks.names:
            assert torch.all(masks.masks[n] <= previous[n])  # only ever removes
        previous = {n: m.clone() for n, m in masks.masks.items()}
        if is_update_step(step, 10, 40, 5):
            target = hook.sparsity_at(step)
            assert abs(masks.sparsity() - target) * masks.numel() <= GROUP[structure] * (1 + (structure == "window_kernel") * 2)
        if step == 40:
            assert masks.sparsity() == pytest.approx(0.8, abs=GROUP[structure] * 3 / masks.numel())
            frozen = masks.checksum()
        if step > 40:
            assert masks.checksum() == frozen  # Campfire: the mask is fixed after the end epoch
    assert math.isclose(hook.sparsity_at(25), 0.8 - 0.8 * 0.5**3)


def test_gradual_nm_ends_with_exactly_n_per_group():
    model = convnet()
    masks = MaskSet.from_model(model, types=["conv"])  # inputs 4 and 8: multiples of 4
    env = SparsifyEnv(model, masks, None, torch.device("cpu"), 0, steps_per_epoch=10, total_steps=30)
    cfg = SparsifyConfig(sparsity=0.5, start_epoch=0, end_epoch=2, every=3, structure="nm",
                         structure_options={"n": 2, "m": 4})
    (hook,) = build_sparsify_hooks(cfg, env, epochs=3)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 31):
        with torch.no_grad():
            for p in masks.params.values():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        masks.apply()
        hook(None, step)
    for m in masks.masks.values():
        groups = m.reshape(m.shape[0], m.shape[1], -1).permute(0, 2, 1).reshape(-1, 4)
        assert torch.all(groups.sum(1) == 2)


def test_end_beyond_training_is_a_clear_error():
    model = convnet()
    masks = MaskSet.from_model(model)
    env = SparsifyEnv(model, masks, None, torch.device("cpu"), 0, 10, 30)
    with pytest.raises(ConfigError, match="end_epoch"):
        build_sparsify_hooks(SparsifyConfig(end_epoch=5), env, epochs=3)


SMALL = {"n_train": 128, "n_test": 64, "image_size": 16}


def campfire_recipe():
    """The bundled campfire recipe shrunk to a 16x16 synthetic task: 3 epochs, pruning until epoch 2."""
    data = apply_overrides(recipe_data("campfire"), [
        "model.name=lenet5", "model.options={}", "data.name=synthetic", "data.batch_size=32",
        "data.options={n_train: 128, n_test: 64, image_size: 16}", "train.epochs=3", "evaluate.robustness=null",
        "stages.0.train.sparsify.start_epoch=0", "stages.0.train.sparsify.end_epoch=2",
        "stages.0.train.sparsify.every=1"])
    return recipe_from_dict(data)


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def campfire_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("campfire")
    summary = run_pipeline(campfire_recipe(), out / "full", load_dataset("synthetic", **SMALL), progress=False,
                           log=lambda s: None)
    return out, summary


def test_campfire_recipe_reaches_target_and_freezes(campfire_run):
    out, summary = campfire_run
    recipe = campfire_recipe()
    sp = recipe.stages[0]["train"]["sparsify"]
    assert sp["structure"] == "window" and recipe.prunable.first_layer == "dense"
    history = rows(out / "full")
    assert history[1]["sparsity"] == pytest.approx(sp["sparsity"], abs=1e-4)  # target reached at end_epoch
    assert history[2]["mask_checksum"] == history[1]["mask_checksum"]  # unchanged after the freeze epoch
    assert history[0]["mask_checksum"] != history[1]["mask_checksum"]
    assert summary["sparsity"] == pytest.approx(sp["sparsity"], abs=1e-4)
    (layer,) = summary["layers"]  # first conv dense, linear layers not selected: only the second conv
    assert layer["name"] == "3.weight"


def test_gradual_resume_gives_identical_masks(campfire_run, tmp_path):
    out, full = campfire_run
    recipe, data = campfire_recipe(), load_dataset("synthetic", **SMALL)

    class Stop(Exception):
        pass

    def stop_at_epoch_2(msg):
        if "epoch 2/3" in msg:
            raise Stop
    with pytest.raises(Stop):
        run_pipeline(recipe, tmp_path / "cut", data, progress=False, log=stop_at_epoch_2)
    resumed = run_pipeline(recipe, tmp_path / "cut", data, resume=True, progress=False, log=lambda s: None)
    assert [r["mask_checksum"] for r in rows(tmp_path / "cut")] == [r["mask_checksum"] for r in rows(out / "full")]
    assert resumed["test_acc"] == full["test_acc"]
