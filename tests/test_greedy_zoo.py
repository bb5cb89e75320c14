"""Greedy forward selection and shrink on Bottleneck ResNets and MobileNetV2 (small width, small input)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.selection import GreedyConfig, budget_counts, greedy_select, greedy_targets
from prunekit.surgery import channel_chains, dead_channels, masked_copy, merge_depthwise, shrink


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=96, n_test=32, image_size=16, channels=3)


def _trained_looking(model: nn.Module, seed: int = 1) -> nn.Module:
    """BN statistics and affine entries away from the identity, as after training; eval mode."""
    return perturb_batchnorm(model, seed).eval()


def _mobilenet(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return _trained_looking(create_model("mobilenet_v2", 3, classes, (16, 16), width=0.25, stem="small"))


def _resnet50(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return _trained_looking(create_model("resnet50", 3, classes, (16, 16), width=0.125, stem="small"))


def test_mobilenet_expand_depthwise_projection_is_one_group():
    model = _mobilenet()
    chains = merge_depthwise(channel_chains(model), model)
    block = chains["features.2.conv.0.0"]  # t = 6: expand 16 -> 96 (width 0.25: 8 -> 48)
    assert block.through == ["features.2.conv.1.0"] and block.consumers == ["features.2.conv.2"]
    assert block.norm == "features.2.conv.0.1" and block.end == "features_2_conv_1_2"  # after the dw ReLU6
    assert "features.2.conv.1.0" not in chains  # the depthwise conv has no group of its own
    # t = 1 block: the stem's channels run through the first depthwise conv (at width 0.25 the first block
    # is 8 -> 8 channels with a residual add, so the stem is coupled; at width 0.5 it is 16 -> 8, free)
    assert not chains["features.0.0"].free
    half = create_model("mobilenet_v2", 3, 10, (16, 16), width=0.5)
    stem = merge_depthwise(channel_chains(half), half)["features.0.0"]
    assert stem.free and stem.through == ["features.1.conv.0.0"] and stem.consumers == ["features.1.conv.1"]
    targets = greedy_targets(model, MaskSet.from_model(model, types=["conv"], include=["features.*"]))
    assert all(model.get_submodule(t).groups == 1 for t in targets)
    assert "features.5.conv.0.0" in targets and "features.5.conv.2" not in targets  # projections feed residuals


def test_bottleneck_both_inner_convs_are_targets_never_the_residual_ones():
    model = _resnet50()
    targets = greedy_targets(model, MaskSet.from_model(model, types=["conv"]))
    assert {"layer1.0.conv1", "layer1.0.conv2", "layer4.2.conv1", "layer4.2.conv2"} <= set(targets)
    assert not any(t.endswith(("conv3", "downsample.0")) for t in targets)
    assert len([t for t in targets if t.startswith("layer")]) == 2 * 16  # 16 bottlenecks


def test_mobilenet_gate_after_relu6_is_folded_exactly(data):
    """The masked network after selection computes the gated network of the selection step."""
    model = _mobilenet(data.num_classes)
    ref = masked_copy(model, {})
    names = ["features.2.conv.0.0.weight", "features.2.conv.1.0.weight"]
    masks = MaskSet(model, names)
    # local imitation re-runs only the projection conv per candidate: fast; the fold is the same either way
    cfg = GreedyConfig(candidates=6, batch_size=16, target_macs_fraction=0.9, local_imitation=True)
    (res,) = greedy_select(model, masks, data, cfg)
    keep = ~dead_channels(masks.masks[names[0]])
    assert torch.equal(keep, ~dead_channels(masks.masks[names[1]]))  # masked in both convs of the group
    assert int(keep.sum()) == res.kept == len(res.picks) < res.channels == 48
    gate = torch.zeros(48)
    gate[keep] = 48 / res.kept  # N / |S| on the selected channels, exactly 0 elsewhere
    ref.features[2].conv[1][2].register_forward_hook(lambda m, i, o: o * gate.view(1, -1, 1, 1))
    x = data.test_x[:8]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_greedy_budget_then_shrink_equals_masked(name, data):
    model = _resnet50(data.num_classes) if name == "resnet50" else _mobilenet(data.num_classes)
    # the first stage only, so the test stays fast; every kind of group is in it
    pattern = "layer1.*" if name == "resnet50" else "features.[0-3].*"
    masks = MaskSet.from_model(model, types=["conv"], include=[pattern])
    targets = greedy_targets(model, masks)
    want = budget_counts(model, (3, 16, 16), targets, channel_chains(model), 0.8)
    res = greedy_select(model, masks, data, GreedyConfig(candidates=4, batch_size=8, target_macs_fraction=0.8))
    assert {r.layer: r.kept for r in res} == want and all(r.kept < r.channels for r in res)
    x = data.test_x[:8]
    small, report = shrink(model, masks.masks, x[:1])
    for r in res:  # every group lost exactly its unselected channels, depthwise convs included
        assert report.channels[r.layer] == (r.channels, r.kept)
    if name == "mobilenet_v2":
        assert small.features[2].conv[1][0].out_channels == small.features[2].conv[1][0].groups == want[
            "features.2.conv.0.0"]
    small.eval()
    with torch.no_grad():
        diff = (small(x) - masked_copy(model, masks.masks).eval()(x)).abs().max()
    assert diff <= 1e-4


def test_shrunken_mobilenet_saves_and_loads_with_depthwise_groups(data, tmp_path):
    from prunekit.surgery import load_shrunk, save_shrunk

    model = _mobilenet(data.num_classes)
    masks = MaskSet(model, ["features.2.conv.0.0.weight", "features.2.conv.1.0.weight"])
    greedy_select(model, masks, data, GreedyConfig(candidates=2, batch_size=8, target_macs_fraction=0.9,
                                                   local_imitation=True))
    small, _ = shrink(model, masks.masks, data.test_x[:1])
    save_shrunk(small, tmp_path / "s.pt", "mobilenet_v2", 3, data.num_classes, (16, 16), {"width": 0.25, "stem": "small"})
    loaded = load_shrunk(tmp_path / "s.pt").eval()
    dw = loaded.features[2].conv[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == small.features[2].conv[1][0].out_channels < 48
    x = data.test_x[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small.eval()(x), atol=0, rtol=0)
