"""compute_masks: exact counts, deterministic ties, allocations, structures, monotone iteration."""

import math

import pytest
import torch
from torch import nn

from prunekit.allocate import erk_densities, select_top
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.pruning import check_sparsity, compute_masks


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def magnitude(ms):
    return {n: p.detach().abs() for n, p in ms.params.items()}


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 0.999])
def test_kept_count_is_exact(allocation, sparsity):
    ms = MaskSet.from_model(net())
    new = compute_masks(magnitude(ms), ms, 1 - sparsity, allocation)
    kept = sum(int(m.sum()) for m in new.values())
    n = ms.numel()
    if allocation == "global":
        assert kept == round(n * (1 - sparsity))
    else:  # per-tensor rounding (and at least one weight per tensor)
        assert abs(kept - n * (1 - sparsity)) <= len(new) + 0.5 or kept == len(new)
    for m in new.values():
        assert set(m.unique().tolist()) <= {0.0, 1.0}


def test_global_keeps_the_largest_scores():
    ms = MaskSet.from_model(net())
    scores = magnitude(ms)
    new = compute_masks(scores, ms, 0.1)
    kept = torch.cat([scores[n][new[n] == 1] for n in ms.names])
    pruned = torch.cat([scores[n][new[n] == 0] for n in ms.names])
    assert kept.min() >= pruned.max()


def test_ties_never_over_prune_and_are_deterministic():
    scores = torch.zeros(10, dtype=torch.float64)
    keep = select_top(scores, torch.ones(10, dtype=torch.long), 3)
    assert keep.tolist() == [True] * 3 + [False] * 7  # earlier positions win ties
    ms = MaskSet.from_model(net())
    equal = {n: torch.ones_like(p) for n, p in ms.params.items()}
    a = compute_masks(equal, ms, 0.37)
    b = compute_masks(equal, ms, 0.37)
    assert sum(int(m.sum()) for m in a.values()) == round(ms.numel() * 0.37)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_iterative_pruning_only_removes():
    ms = MaskSet.from_model(net())
    g = torch.Generator().manual_seed(0)
    previous = {n: m.clone() for n, m in ms.masks.items()}
    for density in (0.8, 0.5, 0.2, 0.05):
        scores = {n: torch.rand(p.shape, generator=g) for n, p in ms.params.items()}  # rankings change each time
        ms.set(compute_masks(scores, ms, density))
        assert ms.kept() == round(ms.numel() * density)
        for n in ms.names:
            assert torch.all(ms.masks[n] <= previous[n])
        previous = {n: m.clone() for n, m in ms.masks.items()}


def test_prevent_collapse_keeps_every_layer_with_exact_total():
    ms = MaskSet.from_model(net())
    scores = magnitude(ms)
    scores["5.weight"] = scores["5.weight"] * 0 - 1.0  # lowest everywhere: would be removed first
    collapsed = compute_masks(scores, ms, 0.05)
    assert collapsed["5.weight"].sum() == 0
    safe = compute_masks(scores, ms, 0.05, prevent_collapse=True)
    assert all(m.sum() > 0 for m in safe.values())
    assert sum(int(m.sum()) for m in safe.values()) == round(ms.numel() * 0.05)


def test_erk_densities_hit_the_target_and_cap_at_one():
    shapes = {"a": (8, 3, 3, 3), "b": (32, 128), "c": (10, 32)}
    for target in (0.1, 0.3, 0.6):
        d = erk_densities(shapes, target)
        total = sum(d[n] * math.prod(s) for n, s in shapes.items())
        assert total == pytest.approx(target * sum(math.prod(s) for s in shapes.values()))
        assert all(0 < v <= 1 for v in d.values())
    # density ratio follows sum(shape)/prod(shape) while nothing is capped
    d = erk_densities(shapes, 0.1)
    assert d["c"] / d["b"] == pytest.approx((42 / 320) / (160 / 4096))
    # at 60% the formula asks for >100% in the small tensors, so they are dense and b takes the rest
    d = erk_densities(shapes, 0.6)
    assert d["a"] == 1.0 and d["c"] == 1.0 and d["b"] < 1.0


def test_channel_structure_removes_whole_filters():
    ms = MaskSet.from_model(net())
    new = compute_masks(magnitude(ms), ms, 0.5, "uniform", "channel", output_layer="prune")
    for m in new.values():
        rows = m.reshape(m.shape[0], -1)
        assert torch.all((rows.sum(1) == 0) | (rows.sum(1) == rows.shape[1]))
        assert int((rows.sum(1) > 0).sum()) == round(m.shape[0] * 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 90, float("nan")])
def test_sparsity_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)"):
        check_sparsity(bad)


def test_non_finite_scores_are_rejected():
    ms = MaskSet.from_model(net())
    scores = magnitude(ms)
    scores["3.weight"][0, 0] = float("nan")
    with pytest.raises(Exception, match="NaN"):
        compute_masks(scores, ms, 0.5)


def test_threshold_fast_path_equals_the_stable_sort():
    from prunekit.allocate import _select_top_equal

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 60, (1,), generator=g))
        scores = torch.randint(0, 4, (n,), generator=g).double()  # many ties
        scores[torch.rand(n, generator=g) < 0.2] = float("-inf")  # dead groups
        size = int(torch.randint(1, 4, (1,), generator=g))
        target = int(torch.randint(0, n * size + 1, (1,), generator=g))
        n_alive = int(torch.isfinite(scores).sum())
        # reference: the general sort path (sizes differ by nothing, but force it by a sentinel)
        order = torch.sort(scores, descending=True, stable=True).indices
        cum = torch.cumsum(torch.full((n,), size)[order], 0)
        k = min(int(torch.searchsorted(cum, torch.tensor(target))) + 1, n)
        if k > 1 and abs(int(cum[k - 2]) - target) <= abs(int(cum[k - 1]) - target):
            k -= 1
        k = 0 if target == 0 else min(max(k, 1), n_alive)
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(_select_top_equal(scores, size, target, n_alive), expected), trial
