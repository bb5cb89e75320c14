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
