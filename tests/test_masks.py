"""MaskSet: selection, enforcement through every optimizer, persistence, export."""

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.masks import MaskSet, export_model, select_prunable
from prunekit.recipe import TrainConfig
from prunekit.train import TrainLoop


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3))


def random_masks(ms: MaskSet, density=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    ms.set({n: (torch.rand(m.shape, generator=g) < density).float() for n, m in ms.masks.items()})


def test_select_prunable_policies():
    net = small_net()
    assert select_prunable(net) == ["0.weight", "3.weight", "5.weight"]
    assert select_prunable(net, types=["linear"]) == ["3.weight", "5.weight"]
    assert select_prunable(net, first_layer="dense", last_layer="dense") == ["3.weight"]
    assert select_prunable(net, exclude=["5"]) == ["0.weight", "3.weight"]
    assert select_prunable(net, include=["[03]"]) == ["0.weight", "3.weight"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"include": ["fc*"]}, "matches no"),
    ({"types": ["conv2d"]}, "Did you mean 'conv'"),
    ({"types": ["conv"], "first_layer": "dense"}, "no prunable tensors"),
    ({"last_layer": "keep"}, "not one of"),
])
def test_select_prunable_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        select_prunable(small_net(), **kwargs)


OPTIMIZER_CONFIGS = [
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-2),
    TrainConfig(optimizer="adamw", lr=0.01, weight_decay=1e-1),
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2, grad_clip=0.5),
]


@pytest.mark.parametrize("cfg", OPTIMIZER_CONFIGS, ids=lambda c: f"{c.optimizer}-clip{c.grad_clip}")
def test_pruned_weights_stay_exactly_zero(cfg):
    net = small_net()
    ms = MaskSet.from_model(net)
    random_masks(ms)
    params_before = {n: id(p) for n, p in net.named_parameters()}
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    loop = TrainLoop(net, ms, cfg, steps_per_epoch=4)
    for _ in range(3):
        loop.train_epoch(x, y, 16, torch.Generator().manual_seed(0), progress=False)
    for n, p in ms.params.items():
        assert torch.all(p[ms.masks[n] == 0] == 0), n
        assert p[ms.masks[n] == 1].abs().sum() > 0
    # momentum/Adam state exists for pruned entries, yet the weights did not revive:
    assert loop.optimizer.state
    assert {n: id(p) for n, p in net.named_parameters()} == params_before


def test_all_ones_mask_changes_nothing():
    cfg = TrainConfig(optimizer="sgd", lr=0.05, weight_decay=1e-3)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    a, b = small_net(), small_net()
    for net, masks in ((a, MaskSet.from_model(a)), (b, None)):
        TrainLoop(net, masks, cfg, 4).train_epoch(x, y, 16, torch.Generator().manual_seed(0), progress=False)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n


def test_mask_grads_zeroes_pruned_gradient():
    net = small_net()
    ms = MaskSet.from_model(net)
    random_masks(ms)
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    ms.mask_grads()
    for n, p in ms.params.items():
        assert torch.all(p.grad[ms.masks[n] == 0] == 0)


def test_state_dict_round_trip_and_mismatch():
    net = small_net()
    ms = MaskSet.from_model(net)
    random_masks(ms, 0.3)
    state = ms.state_dict()
    assert all(v.dtype == torch.bool for v in state.values())
    other = MaskSet.from_model(small_net())
    other.load_state_dict(state)
    assert other.checksum() == ms.checksum()
    assert other.kept() == ms.kept()
    with pytest.raises(CheckpointError, match="another model"):
        MaskSet.from_model(small_net(), types=["linear"]).load_state_dict(state)
    bad = dict(state)
    bad["3.weight"] = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(CheckpointError, match="shape"):
        other.load_state_dict(bad)


def test_report_and_sparsity_counts():
    net = small_net()
    ms = MaskSet.from_model(net)
    ms.set({"5.weight": torch.zeros(3, 16)})
    rows = {r["name"]: r for r in ms.report()}
    assert rows["5.weight"]["kept"] == 0 and rows["0.weight"]["density"] == 1.0
    assert ms.kept() == ms.numel() - 48
    assert ms.collapsed() == ["5.weight"]


def test_export_bakes_zeros_into_a_copy():
    net = small_net()
    ms = MaskSet.from_model(net)
    random_masks(ms)
    with torch.no_grad():  # make the live weights non-zero again: export must not depend on them
        for p in ms.params.values():
            p.add_(1.0)
    plain = export_model(net, ms)
    for n, p in plain.named_parameters():
        if n in ms.masks:
            assert torch.all(p[ms.masks[n] == 0] == 0)
    assert all(p.abs().min() > 0 for p in ms.params.values())  # original untouched
    copy.deepcopy(plain)  # deepcopy works (no hooks or reparametrization)


# -- dead channels: the masked model is the model `shrink` produces -------------------------------------------

def _resnet20_random_bn():
    from prunekit.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=3, num_classes=10, image_size=(8, 8))
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # random statistics and affine terms: a dead channel's shift is not 0
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def _max_masked_vs_shrunk(model, masks, x):
    from prunekit.surgery import shrink

    small, report = shrink(model, masks.masks, x[:1])
    assert report.removed() > 0  # channels really left the shrunk model
    model.eval()
    small.eval()
    with torch.no_grad():
        return float((model(x) - small(x)).abs().max())


def test_channel_prune_masked_model_equals_shrunk_model_before_and_after_training():
    from prunekit.pruning import compute_masks
    from prunekit.train import masked_update

    model = _resnet20_random_bn()
    masks = MaskSet.from_model(model)
    scores = {n: p.detach().abs() for n, p in masks.params.items()}
    masks.set(compute_masks(scores, masks, 0.5, "global", "channel"))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, 8, 8, generator=g)
    assert _max_masked_vs_shrunk(model, masks, x) <= 1e-5
    # the silenced entries stay silent under SGD with momentum and weight decay
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(3):
        y = torch.randint(0, 10, (16,), generator=g)
        masked_update(nn.functional.cross_entropy(model(torch.randn(16, 3, 8, 8, generator=g)), y), opt, masks, None)
    assert _max_masked_vs_shrunk(model, masks, x) <= 1e-5


def test_dead_channel_bias_and_batchnorm_are_zeroed_and_stats_reset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model[1].running_mean.fill_(2.0)
    masks = MaskSet.from_model(model)
    mask = torch.ones(4, 2, 3, 3)
    mask[1] = 0
    masks.set({"0.weight": mask})
    assert model[0].bias[1] == 0 and model[1].weight[1] == 0 and model[1].bias[1] == 0
    assert model[1].running_mean.tolist() == [2.0, 0.0, 2.0, 2.0] and model[1].running_var[1] == 1.0
    assert bool((model[0].bias[[0, 2, 3]] != 0).all())  # live channels untouched
    with torch.no_grad():
        model[1].bias.add_(1.0)  # an optimizer step moving the dead shift ...
    masks.apply()
    assert model[1].bias[1] == 0  # ... is undone like a pruned weight


def test_conv_transpose_is_refused_with_the_fix():
    model = nn.Sequential(nn.ConvTranspose2d(4, 8, 3))
    with pytest.raises(ConfigError, match=r"ConvTranspose2d.*\[in, out.*prunable.exclude"):
        MaskSet(model, ["0.weight"])


def test_output_layer_is_the_last_conv_or_linear():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert MaskSet.from_model(model).output == "4.weight"
    assert MaskSet.from_model(model, last_layer="dense").output is None
