"""Physical channel removal: the shrunken model computes what the (silenced) masked model computes."""

import json

import pytest
import torch
from torch import nn

from prunekit.masks import MaskSet
from prunekit.measure import count_params
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.surgery import (channel_chains, dead_channels, fit_to_state_dict, load_shrunk, masked_copy,
                              save_shrunk, shrink, silence_dead_channels)

MODELS = [("lenet5", {}), ("vgg11", {"width": 0.25}), ("resnet20", {"width": 0.25})]


def _random_channel_masks(model, seed=1, p=0.5):
    """Trained-looking BN statistics and ~p of every layer's output channels masked."""
    perturb_batchnorm(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    masks = MaskSet.from_model(model)
    new = {}
    for name, mask in masks.masks.items():
        m = mask.clone()
        m[torch.rand(m.shape[0], generator=g) < p] = 0
        new[name] = m
    masks.set(new)
    return masks


@pytest.mark.parametrize("name,kw", MODELS)
def test_shrunk_equals_masked_and_saves(name, kw, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 1, 10, (28, 28), **kw)
    masks = _random_channel_masks(model)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    small, report = shrink(model, masks.masks, x[:1])
    ref = masked_copy(model, masks.masks).eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=0)
    assert count_params(small)["total"] < count_params(model)["total"]
    assert report.removed() > 0
    # saves with the new shapes and loads as plain data
    path = tmp_path / "small.pt"
    save_shrunk(small, path, name, 1, 10, (28, 28), kw)
    blob = torch.load(path, weights_only=True)
    assert {k: tuple(v.shape) for k, v in blob["state_dict"].items()} == \
        {k: tuple(v.shape) for k, v in small.state_dict().items()}
    loaded = load_shrunk(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)


def test_coupled_residual_channel_alive_elsewhere_is_kept():
    model = create_model("resnet20", 1, 10, (28, 28), width=0.25)
    masks = MaskSet.from_model(model)
    m = masks.masks["layer1.0.conv2.weight"].clone()
    m[0] = 0  # channel 0 of the residual stream is still written by the stem and the other blocks
    masks.set({"layer1.0.conv2.weight": m})
    small, report = shrink(model, masks.masks, torch.zeros(1, 1, 28, 28))
    assert report.removed() == 0
    assert small.layer1[0].conv2.out_channels == model.layer1[0].conv2.out_channels


def test_inner_conv_channels_are_free_outer_are_coupled():
    chains = channel_chains(create_model("resnet20", 1, 10, (28, 28), width=0.25))
    assert chains["layer2.1.conv1"].free and chains["layer2.1.conv1"].consumers == ["layer2.1.conv2"]
    assert chains["layer2.1.conv1"].norm == "layer2.1.bn1"
    assert not chains["layer2.1.conv2"].free and not chains["conv1"].free
    assert not chains["fc"].free


def test_silenced_channels_stay_zero_under_training():
    torch.manual_seed(0)
    model = create_model("vgg11", 1, 10, (28, 28), width=0.25)
    masks = _random_channel_masks(model)
    silence_dead_channels(model, masks.masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(16, 1, 28, 28)), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        masks.mask_grads()
        opt.step()
        masks.apply()
    dead = dead_channels(masks.masks["features.4.weight"])
    assert dead.any()
    bn = model.features[5]
    assert bn.weight[dead].abs().max() == 0 and bn.bias[dead].abs().max() == 0


def test_fit_to_state_dict_rejects_foreign_state():
    model = create_model("lenet5", 1, 10, (28, 28))
    with pytest.raises(Exception, match="missing"):
        fit_to_state_dict(model, {"nope": torch.zeros(1)})


def test_greedy_finetune_shrink_recipe_reports_real_sizes(tmp_path):
    from prunekit.data import load_dataset
    from prunekit.pipeline import run_pipeline
    from prunekit.recipe import recipe_from_dict

    data = load_dataset("synthetic", n_train=100, n_test=50, image_size=12)
    recipe = recipe_from_dict({
        "name": "greedy-shrink", "model": {"name": "resnet20", "options": {"width": 0.125}}, "baseline": False,
        "data": {"name": "synthetic", "batch_size": 25}, "prunable": {"types": ["conv"]},
        "train": {"epochs": 1, "lr": 0.05},
        "stages": [{"train": {}}, {"greedy": {"target_macs_fraction": 0.5, "candidates": 4, "batch_size": 16}},
                   {"train": {"epochs": 1, "lr": 0.02}}, {"shrink": {"threads": 1}}],
    })
    summary = run_pipeline(recipe, tmp_path, data, progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["kind"] == "shrink")
    assert row["acc_shrunk"] == pytest.approx(row["acc_masked"], abs=1e-9)  # greedy silenced its channels
    assert summary["params_total"] == row["params_after"] < row["params_before"]
    assert summary["dense_macs"] == row["macs_after"] <= 0.5 * row["macs_before"]
    facts = json.loads((tmp_path / "deploy.json").read_text())  # deployment facts of the shrunken model
    assert facts["params"] == row["params_after"] and facts["macs"] == row["macs_after"]
    assert set(facts["latency"]) == {"1", "64"} and facts["latency"]["64"]["threads"] == 1
    # resuming the finished run rebuilds the smaller layers from the checkpoint
    again = run_pipeline(recipe, tmp_path, data, resume=True, progress=False, log=lambda s: None)
    assert again["params_total"] == summary["params_total"] and again["test_acc"] == summary["test_acc"]
    loaded = load_shrunk(tmp_path / "model_shrunk.pt")
    assert count_params(loaded)["total"] == row["params_after"]
