"""Allocation: turn one target density into which groups each tensor keeps.

* global  - one threshold over all tensors (the PaI papers' default);
* uniform - every tensor keeps the same fraction;
* erk     - Erdos-Renyi-Kernel per-tensor densities (Evci et al. 2020), dense where the
            formula asks for more than 100%.

Exact counts: a selection keeps round(n * density) weights (for groups larger than one
weight, the prefix of groups whose size is closest to that count). Ties are broken
deterministically by position (a stable sort), so a tie at the threshold never prunes
more than asked.

Two rules keep structured pruning from silently killing layers (prunekit/pruning.py
applies them):

* normalisation (`normalize: layer`, the default for every granularity but `weight`):
  before a global ranking each layer's group scores are divided by the mean |score| of its
  live groups. Raw group scores carry the layer's scale (weight init ~ 1/sqrt(fan_in)) and,
  with `reduce: sum`, the group's size, so one threshold would empty whole small-fan-in
  layers; after normalisation a threshold compares groups by how they stand inside their
  own layer, and `sum` and `mean` rank alike. `normalize: none` keeps the raw scores (the
  pruning-at-init papers' global ranking, and the default for `weight`).
* the collapse floor (`prevent_collapse`, default on for structured global allocation):
  every output unit (conv filter / linear row) keeps its best live group, or, when a group
  is a whole output unit (`channel`), every layer keeps its best channel. The floor is
  taken from the global budget, so the total stays exact; a floor larger than the budget
  is an error naming the highest sparsity it allows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.registry import Registry

ALLOCATIONS: Registry = Registry("allocation")


def select_top(scores: Tensor, sizes: Tensor, target: int) -> Tensor:
    """Keep the highest-scoring groups whose total size is closest to `target` weights.

    `scores` is 1-D (float64; -inf marks a dead group that must stay dead), `sizes` the
    weights per group. Returns a bool vector. Equal scores keep earlier groups first.
    """
    n_alive = int((scores > float("-inf")).sum())  # +inf marks a reserved (collapse floor) group
    if target <= 0:
        return torch.zeros(len(scores), dtype=torch.bool)
    if len(sizes) and bool((sizes == sizes[0]).all()):
        return _select_top_equal(scores, int(sizes[0]), target, n_alive)
    order = torch.sort(scores, descending=True, stable=True).indices
    cum = torch.cumsum(sizes[order], 0)
    # Smallest prefix reaching the target, then step back one group if that lands closer.
    n = int(torch.searchsorted(cum, torch.tensor(target, dtype=cum.dtype))) + 1
    n = min(n, len(order))
    if n > 1 and abs(int(cum[n - 2]) - target) <= abs(int(cum[n - 1]) - target):
        n -= 1
    n = min(max(n, 1), n_alive)
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[order[:n]] = True
    return keep


def _select_top_equal(scores: Tensor, size: int, target: int, n_alive: int) -> Tensor:
    """`select_top` when every group has the same size: an O(n) threshold instead of a sort.

    Iterative methods (SynFlow: 100 rounds) call this many times on every weight, so the
    k-th value plus an index-ordered fill of the ties replaces a full stable sort with the
    same result.
    """
    ceil = -(-target // size)
    n = ceil - 1 if ceil > 1 and abs((ceil - 1) * size - target) <= abs(ceil * size - target) else ceil
    n = 0 if target <= 0 else min(max(n, 1), n_alive)
    keep = torch.zeros(len(scores), dtype=torch.bool)
    if n == 0:
        return keep
    threshold = torch.kthvalue(scores, len(scores) - n + 1).values
    keep |= scores > threshold
    ties = torch.nonzero(scores == threshold).flatten()
    keep[ties[: n - int(keep.sum())]] = True
    return keep


NORMALIZATIONS = ("auto", "layer", "none")


def normalize_layer(scores: Tensor) -> Tensor:
    """One layer's group scores divided by the mean |score| of its live groups (-inf stays -inf)."""
    live = torch.isfinite(scores)
    if not bool(live.any()):
        return scores
    scale = scores[live].abs().mean()
    return scores / scale if float(scale) > 0 else scores


def unit_floor(scores: Tensor, units: Tensor) -> Tensor:
    """Bool [groups]: the best live group of every output unit (`units[g]` = unit of group g).

    When every group is a whole unit (channel granularity), only the layer's best group:
    keeping every unit would keep everything.
    """
    live = scores > float("-inf")
    reserved = torch.zeros(len(scores), dtype=torch.bool)
    if not bool(live.any()):
        return reserved
    units = units.to(scores.device)
    n_units = int(units.max()) + 1
    if n_units == len(units):
        reserved[int(torch.argmax(torch.where(live, scores, torch.full_like(scores, float("-inf")))))] = True
        return reserved
    best = torch.full((n_units,), float("-inf"), dtype=scores.dtype).scatter_reduce(0, units, scores, "amax")
    is_best = live & (scores == best[units])
    idx = torch.arange(len(scores))
    first = torch.full((n_units,), len(scores), dtype=torch.long).scatter_reduce(0, units[is_best], idx[is_best], "amin")
    reserved[first[first < len(scores)]] = True
    return reserved


def _sizes(group_scores: dict[str, Tensor], group_size: dict[str, int]) -> dict[str, Tensor]:
    return {n: torch.full((len(s),), group_size[n], dtype=torch.long) for n, s in group_scores.items()}


def _floor_error(need: int, target: int, total: int) -> ConfigError:
    return ConfigError(
        f"prevent_collapse keeps the best group of every output unit ({need} weights), more than the "
        f"{target} the target density keeps. Lower the sparsity to <= {1 - need / total:.6f}, or set "
        "prevent_collapse: false."
    )


@ALLOCATIONS.register("global")
def allocate_global(group_scores, group_size, numel, density, floor=None, shapes=None):
    """One threshold across all tensors; `floor` groups (bool per tensor) are kept first."""
    names = list(group_scores)
    flat = torch.cat([group_scores[n] for n in names]).clone()
    sizes = torch.cat(list(_sizes(group_scores, group_size).values()))
    offsets = torch.tensor([0] + [len(group_scores[n]) for n in names]).cumsum(0)
    target = round(sum(numel.values()) * density)
    if floor:
        reserved = torch.cat([floor.get(n, torch.zeros(len(group_scores[n]), dtype=torch.bool)) for n in names])
        need = int(sizes[reserved].sum())
        if need > target:
            raise _floor_error(need, target, sum(numel.values()))
        # Reserving each unit's best group before the cut guarantees no tensor is emptied
        # (layer collapse) while the total still equals the target.
        flat[reserved] = float("inf")
    keep = select_top(flat, sizes, target)
    return {n: keep[offsets[i] : offsets[i + 1]] for i, n in enumerate(names)}


def _per_tensor(group_scores, group_size, numel, densities, floor=None):
    out = {}
    for n, s in group_scores.items():
        target = max(group_size[n], round(numel[n] * densities[n]))  # never empty a tensor
        if floor and n in floor and bool(floor[n].any()):
            s = s.clone()
            s[floor[n]] = float("inf")
            target = max(target, int(floor[n].sum()) * group_size[n])
        out[n] = select_top(s, torch.full((len(s),), group_size[n], dtype=torch.long), target)
    return out


@ALLOCATIONS.register("uniform", "layerwise")
def allocate_uniform(group_scores, group_size, numel, density, floor=None, shapes=None):
    """Every tensor keeps the same fraction `density` (at least one group, and its floor)."""
    return _per_tensor(group_scores, group_size, numel, {n: density for n in group_scores}, floor)


def erk_densities(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities: d_l proportional to sum(shape)/prod(shape), total = density."""
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        free = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        eps = budget / free if free > 0 else 0.0
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1.0}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


@ALLOCATIONS.register("erk")
def allocate_erk(group_scores, group_size, numel, density, floor=None, shapes=None):
    """Per-tensor densities from the ERK formula, then a per-tensor top-k."""
    if shapes is None:
        raise ConfigError("erk allocation needs the tensor shapes")
    return _per_tensor(group_scores, group_size, numel, erk_densities(shapes, density), floor)
