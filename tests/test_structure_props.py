"""Property tests over every registered granularity x allocation x model family (hypothesis).

A new granularity or allocation is covered the moment it is registered: for each one the
masks must reach the documented count, keep the granularity's own invariant, never
revive a weight, never empty a layer, keep every class of the output layer under channel
pruning, and be refused only with a ConfigError that names the fix.
"""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.allocate import ALLOCATIONS
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.pruning import compute_masks
from prunekit.structure import STRUCTURES, create_structure


def with_1x1():
    """Convs with a 1x1 conv between them (the shortcut shape that global rankings used to empty)."""
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 16), nn.ReLU(),
                         nn.Linear(16, 8))


def with_linears():
    """One conv and two linear layers: kernel granularities fall back to unstructured on the linears."""
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
                         nn.Linear(32, 8))


def depthwise():
    """A depthwise conv ([out, 1, kh, kw]) between ordinary ones."""
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                         nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 8))


def conv1d():
    """Conv1d layers ([out, in, k]): kernels and windows along one axis."""
    return nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6, 16), nn.ReLU(), nn.Linear(16, 8))


MODELS = {"1x1": with_1x1, "linears": with_linears, "depthwise": depthwise, "conv1d": conv1d}
STRUCTURE_NAMES = sorted({STRUCTURES.get(n).name: n for n in STRUCTURES.names()})  # one name per class


def build(name):
    opts = {"linear": "weight"} if name in ("window", "kernel", "window_kernel") else {}
    return create_structure(name, **opts)


def layer_counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def check_invariant(struct, name, mask, count, before):
    """The granularity's own shape invariant for one layer's new mask."""
    if struct.per_layer:
        if mask.dim() < 3 and struct.name != "nm":
            return  # linear fallback: unstructured
        if struct.name == "nm":
            groups = struct.local(mask)
            d = count / mask.numel()
            assert int(groups.sum(1).max()) <= max(struct.n, math.ceil(struct.m * d - 1e-9))
        else:
            windows = mask.reshape(mask.shape[0] * mask.shape[1], -1)
            kept_windows = int((windows.sum(1) > 0).sum())
            assert int(windows.sum(1).max()) <= math.ceil(count / max(1, kept_windows))
    else:
        g = struct.grouped(mask)
        assert torch.all((g.sum(1) == 0) | (g.sum(1) == g.shape[1]))  # groups are all or nothing


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(sorted(MODELS)), structure=st.sampled_from(STRUCTURE_NAMES),
       allocation=st.sampled_from(sorted(ALLOCATIONS.names())), densities=st.lists(st.floats(0.06, 1.0), min_size=1,
                                                                                  max_size=3), seed=st.integers(0, 50))
def test_every_structure_allocation_and_model(model, structure, allocation, densities, seed):
    torch.manual_seed(seed)
    masks = MaskSet.from_model(MODELS[model]())
    struct = build(structure)
    g = torch.Generator().manual_seed(seed)
    first = True
    for density in sorted(densities, reverse=True):
        scores = {n: torch.rand(p.shape, generator=g) for n, p in masks.params.items()}
        before = {n: m.clone() for n, m in masks.masks.items()}
        try:
            new = compute_masks(scores, masks, density, allocation, struct)
        except ConfigError as e:
            # the documented refusals, each naming the fix
            if "output layer" in str(e):  # held dense, it alone exceeds the budget
                out = masks.masks[masks.output]
                assert struct.removes_units and round(masks.numel() * density) <= int(out.sum())
            elif "prevent_collapse keeps" in str(e):  # the floor alone exceeds the budget
                need, target = (int(v) for v in re.findall(r"\((\d+) weights\), more than the (\d+)", str(e))[0])
                assert allocation == "global" and struct.name != "weight" and need > target
            elif structure == "nm":
                assert "multiple of 4" in str(e) or density < 0.5
            elif structure == "block":
                assert "does not tile" in str(e) and "block shape" in str(e)
            else:
                raise
            return
        total = sum(layer_counts(new).values())
        for n, m in new.items():
            assert m.shape == masks.masks[n].shape and set(m.unique().tolist()) <= {0.0, 1.0}
            assert torch.all(m <= before[n])  # never revives
            assert m.sum() > 0, f"{n} emptied by {structure} x {allocation} at {density}"
            check_invariant(struct, n, m, int(m.sum()), before[n])
        if allocation == "global" and struct.name != "weight" and not struct.removes_units:
            for n, m in new.items():  # the collapse floor: every output unit that had a weight keeps one
                whole = not struct.per_layer and len(struct.group_units(m.shape)) == m.shape[0]  # a group = a unit
                if not whole and not (struct.per_layer and m.dim() > 2 and struct.name != "nm"):  # patterns: even
                    had = before[n].reshape(m.shape[0], -1).any(1)
                    assert bool(m.reshape(m.shape[0], -1).any(1)[had].all()), n
        if struct.removes_units:  # every class of the output layer stays
            assert bool(new[masks.output].reshape(new[masks.output].shape[0], -1).any(1).all())
        if first:  # exact counts (from a dense start)
            target = round(masks.numel() * density)
            if allocation == "global" and (struct.per_layer or struct.name == "weight"):
                if structure != "nm":
                    assert total == target
            elif allocation == "global":  # closest prefix of whole groups
                assert abs(total - target) <= max(struct.group_size(m.shape) for m in new.values())
            elif allocation == "uniform" and (struct.per_layer or struct.name == "weight"):
                for n, m in new.items():
                    assert int(m.sum()) == max(1, round(m.numel() * density))
            if structure == "nm" and density == 0.5:
                for m in new.values():
                    assert torch.all(struct.local(m).sum(1) == struct.n)
        assert total <= sum(int(m.sum()) for m in before.values())  # monotone
        masks.set(new)
        first = False


@pytest.mark.parametrize("allocation", sorted(ALLOCATIONS.names()))
@pytest.mark.parametrize("density", [0.5, 0.3, 0.1])
def test_window_and_nm_hold_the_layer_count_under_every_allocation(allocation, density):
    from prunekit.allocate import erk_densities

    torch.manual_seed(0)
    masks = MaskSet.from_model(with_1x1(), types=["conv"])
    scores = {n: p.detach().abs() for n, p in masks.params.items()}
    new = compute_masks(scores, masks, density, allocation, "window")
    total = sum(layer_counts(new).values())
    if allocation == "global":
        assert total == round(masks.numel() * density)
    expected = erk_densities({n: m.shape for n, m in new.items()}, density) if allocation == "erk" else None
    for n, m in new.items():
        count = int(m.sum())
        if expected is not None:
            assert count == round(m.numel() * expected[n])
        windows = m.reshape(m.shape[0] * m.shape[1], -1)
        assert int(windows.sum(1).max()) == math.ceil(count / windows.shape[0])  # the layer's own cap
    nm = compute_masks(scores, masks, 0.5, allocation, create_structure("nm", n=2, m=4))
    for n, m in nm.items():
        if m.shape[1] % 4 == 0:
            assert torch.all(create_structure("nm").local(m).sum(1) == 2)
