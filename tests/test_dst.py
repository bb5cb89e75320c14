"""SET / RigL: constant live count, regrown weights start at zero with fresh optimizer moments, exact resume."""

import json

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.dst import cosine_drop_fraction
from prunekit.masks import MaskSet
from prunekit.pipeline import run_pipeline
from prunekit.recipe import SparsifyConfig, TrainConfig, recipe_from_dict
from prunekit.schedules import SparsifyEnv, build_sparsify_hooks
from prunekit.train import TrainLoop, epoch_generator

DATA = load_dataset("synthetic", n_train=256, n_test=64, image_size=12)


def setup(method, optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 32), nn.ReLU(), nn.Linear(32, 10))
    masks = MaskSet.from_model(model)
    env = SparsifyEnv(model, masks, DATA, torch.device("cpu"), seed=0, steps_per_epoch=8, total_steps=16)
    cfg = SparsifyConfig(method=method, sparsity=0.8, every=2, end_epoch=2, drop_fraction=0.5, allocation="erk")
    (hook,) = build_sparsify_hooks(cfg, env, epochs=2)
    loop = TrainLoop(model, masks, TrainConfig(epochs=2, optimizer=optimizer, lr=0.01), 8)
    return model, masks, hook, loop


def test_cosine_drop_fraction_known_values():
    assert cosine_drop_fraction(0, 0, 100, 0.3) == pytest.approx(0.3)
    assert cosine_drop_fraction(50, 0, 100, 0.3) == pytest.approx(0.15)
    assert cosine_drop_fraction(100, 0, 100, 0.3) == pytest.approx(0.0)


@pytest.mark.parametrize("method", ["set", "rigl"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_count_constant_regrown_start_at_zero_with_reset_moments(method, optimizer):
    model, masks, hook, loop = setup(method, optimizer)
    assert masks.sparsity() == pytest.approx(0.8, abs=1e-3)  # the initial random mask is at the target
    loop.train_epoch(DATA.train_x, DATA.train_y, 32, epoch_generator(0, 0, 0), progress=False)  # fills moments
    counts = {n: int(m.sum()) for n, m in masks.masks.items()}
    changed = 0
    for step in (10, 12, 14):
        before = {n: m.clone().bool() for n, m in masks.masks.items()}
        weights = {n: p.detach().clone() for n, p in masks.params.items()}
        hook(loop, step)
        for n, p in masks.params.items():
            after = masks.masks[n].bool()
            assert int(after.sum()) == counts[n]  # sparsity constant across updates
            grown = after & ~before[n]
            dropped = before[n] & ~after
            changed += int(grown.sum())
            assert torch.all(p.detach()[grown] == 0)  # regrown weights start at exactly 0
            state = loop.optimizer.state[p]
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                if key in state:
                    assert torch.all(state[key][grown] == 0)
            if dropped.any():  # the dropped ones were the smallest magnitudes of the live weights
                # survivors: live before and after, excluding just-dropped weights regrown at zero
                kept_old = before[n] & after & (p.detach() != 0)
                assert weights[n].abs()[dropped].max() <= weights[n].abs()[kept_old].min()
            assert torch.all(p.detach()[~after] == 0)
        # a training step between updates
        loop.step = step
    assert changed > 0
    hook(loop, 16)  # at end: frozen
    assert sum(counts.values()) == masks.kept()


def test_rigl_regrows_where_the_dense_gradient_is_largest():
    model, masks, hook, loop = setup("rigl", "sgd")
    before = {n: m.clone().bool() for n, m in masks.masks.items()}
    grads = hook.dense_grads(loop, 10)
    hook(loop, 10)
    for n in masks.names:
        after = masks.masks[n].bool()
        grown = after & ~(before[n] & after)
        candidates_not_grown = ~after & ~before[n]
        if grown.any() and candidates_not_grown.any():
            assert grads[n].abs()[grown & ~before[n]].min() >= grads[n].abs()[candidates_not_grown].max() - 1e-12


def test_set_regrows_at_random_only_where_a_gradient_can_flow():
    model, masks, hook, loop = setup("set", "sgd")
    dead = masks.masks["0.weight"].clone()
    dead[0] = 0  # conv channel 0 dies: the linear weights reading it get exactly zero gradient
    masks.set({"0.weight": dead})
    grads = hook.dense_grads(loop, 10)
    reads_dead = torch.zeros(32, 8, 100, dtype=torch.bool)
    reads_dead[:, 0] = True
    assert torch.all(grads["3.weight"][reads_dead.view(32, 800)] == 0)
    before = {n: m.clone().bool() for n, m in masks.masks.items()}
    hook(loop, 10)
    grown = {n: masks.masks[n].bool() & ~before[n] for n in masks.names}
    assert sum(int(g.sum()) for g in grown.values()) > 0
    for n in masks.names:
        assert torch.all(grads[n][grown[n]] != 0)  # never regrown where the gradient is exactly zero


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_dst_recipe_keeps_sparsity_and_resumes_exactly(method, tmp_path):
    recipe = recipe_from_dict({
        "model": {"name": "lenet300"}, "data": {"name": "synthetic", "batch_size": 32, "options": {"image_size": 12}},
        "baseline": False,
        "train": {"epochs": 3, "lr": 0.05},
        "stages": [{"train": {"sparsify": {"method": method, "sparsity": 0.9, "every": 1, "end_epoch": 2}}}]})
    data = load_dataset("synthetic", n_train=96, n_test=32, image_size=12)
    run_pipeline(recipe, tmp_path / "full", data, progress=False, log=lambda s: None)
    full = rows(tmp_path / "full")
    assert all(r["sparsity"] == pytest.approx(0.9, abs=1e-5) for r in full)
    assert full[0]["mask_checksum"] != full[1]["mask_checksum"]  # drop-and-regrow moves the mask
    assert full[1]["mask_checksum"] == full[2]["mask_checksum"]  # no updates after end_epoch

    class Stop(Exception):
        pass

    def stop(msg):
        if "epoch 2/3" in msg:
            raise Stop
    with pytest.raises(Stop):
        run_pipeline(recipe, tmp_path / "cut", data, progress=False, log=stop)
    run_pipeline(recipe, tmp_path / "cut", data, resume=True, progress=False, log=lambda s: None)
    assert [r["mask_checksum"] for r in rows(tmp_path / "cut")] == [r["mask_checksum"] for r in full]
