"""Greedy forward selection: invariants and known values on a small trained model."""

import copy

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.measure import count_flops
from prunekit.selection import GreedyConfig, budget_counts, greedy_select, greedy_targets
from prunekit.surgery import channel_chains, dead_channels, shrink


def tiny_net(classes: int) -> nn.Sequential:
    """conv-BN-ReLU-pool, conv-BN-ReLU-global pool, fc-ReLU, classifier: every chain type in ~2k params."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, classes))


@pytest.fixture(scope="module")
def trained():
    """The tiny net trained briefly on a 400-sample 12x12 synthetic set."""
    data = load_dataset("synthetic", n_train=400, n_test=100, image_size=12)
    torch.manual_seed(0)
    model = tiny_net(data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        for i in range(0, 400, 40):
            loss = nn.functional.cross_entropy(model(data.train_x[i:i + 40]), data.train_y[i:i + 40])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, data


def _copy(model, names):
    m = copy.deepcopy(model)
    return m, MaskSet(m, names)


def test_first_pick_is_brute_force_best_and_set_grows_one_by_one(trained):
    model, data = trained
    m, masks = _copy(model, ["0.weight"])  # only the first conv is selected
    # candidates >= channels and a minibatch = the whole training set make step 1 exhaustive
    cfg = GreedyConfig(candidates=100, batch_size=len(data.train_x), target_macs_fraction=0.6)
    (res,) = greedy_select(m, masks, data, cfg)
    assert len(res.picks) == len(set(res.picks)) == res.kept == len(res.losses) == res.budget
    kept = (~dead_channels(masks.masks["0.weight"])).nonzero().flatten().tolist()
    assert sorted(res.picks) == kept
    # brute force: keep channel j only, scaled by N (gate N/|{j}|), exactly zero elsewhere
    n = model[0].out_channels
    losses = []
    for j in range(n):
        gate = torch.zeros(n)
        gate[j] = n
        h = model[2].register_forward_hook(lambda mod, i, o, g=gate: o * g.view(1, -1, 1, 1))
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(model(data.train_x), data.train_y)))
        h.remove()
    assert res.picks[0] == min(range(n), key=losses.__getitem__)
    assert res.losses[0] == pytest.approx(min(losses), rel=1e-5)  # a tiny "empty" gate would shift this


def test_unselected_channels_output_exact_zero_and_gate_folded(trained):
    model, data = trained
    m, masks = _copy(model, ["0.weight"])
    greedy_select(m, masks, data, GreedyConfig(candidates=8, batch_size=64, target_macs_fraction=0.5))
    dead = dead_channels(masks.masks["0.weight"])
    assert dead.any() and (~dead).any()
    with torch.no_grad():
        act = m[2](m[1](m[0](data.train_x[:16])))
    assert act[:, dead].abs().max() == 0
    # kept channels carry the fold of the final gate N/|S| into their BatchNorm's gamma and beta
    scale = len(dead) / int((~dead).sum())
    torch.testing.assert_close(m[1].weight[~dead], model[1].weight[~dead] * scale)
    torch.testing.assert_close(m[1].bias[~dead], model[1].bias[~dead] * scale)


def test_budget_stop_gives_requested_counts_and_macs(trained):
    model, data = trained
    m, masks = _copy(model, [n for n, _ in model.named_parameters() if n.endswith("weight")])
    chains = channel_chains(m)
    targets = greedy_targets(m, masks, chains)
    assert targets == ["0", "4", "9"]  # the classifier is never selected
    shape = tuple(data.train_x.shape[1:])
    want = budget_counts(m, shape, targets, chains, 0.4)
    res = greedy_select(m, masks, data, GreedyConfig(candidates=10, batch_size=32, target_macs_fraction=0.4))
    assert {r.layer: r.kept for r in res} == want
    assert all(r.stop == "budget" for r in res)
    small, _ = shrink(m, masks.masks, data.train_x[:1])
    assert count_flops(small, shape)["dense_macs"] <= 0.4 * count_flops(model, shape)["dense_macs"]


def test_channel_multiple_gives_widths_in_whole_multiples(trained):
    from prunekit.stages.greedy import GreedyStageConfig

    model, data = trained
    m, masks = _copy(model, [n for n, _ in model.named_parameters() if n.endswith("weight")])
    stage = GreedyStageConfig(candidates=10, batch_size=32, target_macs_fraction=0.4, channel_multiple=4)
    cfg = GreedyConfig(**stage.model_dump(), seed=0)
    assert cfg.channel_multiple == 4  # the recipe key reaches the selection
    res = greedy_select(m, masks, data, cfg)
    assert all(r.kept % 4 == 0 or r.kept == r.channels for r in res), [(r.kept, r.channels) for r in res]
    assert any(r.kept < r.channels for r in res)
    chains = channel_chains(m)
    shape = tuple(data.train_x.shape[1:])
    assert {r.layer: r.kept for r in res} == budget_counts(m, shape, greedy_targets(m, masks, chains), chains, 0.4, 4)


def test_tolerance_stop(trained):
    model, data = trained
    m, masks = _copy(model, ["4.weight"])
    (res,) = greedy_select(m, masks, data, GreedyConfig(candidates=10, batch_size=64, tolerance=0.3,
                                                        eval_samples=100))
    assert res.stop == "tolerance" and res.kept < res.channels
    m2, masks2 = _copy(model, ["4.weight"])
    (full,) = greedy_select(m2, masks2, data, GreedyConfig(candidates=10, batch_size=64, tolerance=0.0,
                                                            eval_samples=100))
    # a looser tolerance never needs more channels
    assert res.kept <= full.kept
    assert res.acc is not None and full.acc is not None


def test_local_imitation_respects_budget(trained):
    model, data = trained
    m, masks = _copy(model, ["0.weight", "9.weight"])
    res = greedy_select(m, masks, data, GreedyConfig(candidates=10, batch_size=32, target_macs_fraction=0.5,
                                                     local_imitation=True, finetune_steps=2))
    for r in res:
        assert r.kept == r.budget == int((~dead_channels(masks.masks[f"{r.layer}.weight"])).sum())


def test_needs_a_stopping_rule(trained):
    model, data = trained
    m, masks = _copy(model, ["0.weight"])
    with pytest.raises(ConfigError, match="stopping rule"):
        greedy_select(m, masks, data, GreedyConfig())


def test_fast_local_imitation_equals_the_general_path(trained):
    model, data = trained
    picks = []
    for fast in (True, False):
        m, masks = _copy(model, ["0.weight", "4.weight"])
        res = greedy_select(m, masks, data, GreedyConfig(candidates=6, batch_size=32, target_macs_fraction=0.5,
                                                         local_imitation=True, fast_local=fast))
        picks.append([(r.picks, r.losses) for r in res])
    for (pa, la), (pb, lb) in zip(*picks):
        assert pa == pb
        assert la == pytest.approx(lb, rel=1e-4)
