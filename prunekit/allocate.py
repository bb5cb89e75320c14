"""Allocation: turn one target density into which groups each tensor keeps.

* global  - one threshold over all tensors (the PaI papers' default);
* uniform - every tensor keeps the same fraction;
* erk     - Erdos-Renyi-Kernel per-tensor densities (Evci et al. 2020), dense where the
            formula asks for more than 100%.

Exact counts: a selection keeps round(n * density) weights (for groups larger than one
weight, the prefix of groups whose size is closest to that count). Ties are broken
deterministically by position (a stable sort), so a tie at the threshold never prunes
more than asked.
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
    n_alive = int(torch.isfinite(scores).sum())
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


def _sizes(group_scores: dict[str, Tensor], group_size: dict[str, int]) -> dict[str, Tensor]:
    return {n: torch.full((len(s),), group_size[n], dtype=torch.long) for n, s in group_scores.items()}


@ALLOCATIONS.register("global")
def allocate_global(group_scores, group_size, numel, density, prevent_collapse=False):
    """One threshold across all tensors; optionally reserve each tensor's best group first."""
    names = list(group_scores)
    scores = {n: group_scores[n].clone() for n in names}
    reserved: dict[str, int] = {}
    if prevent_collapse:
        # Reserving the top group of every tensor before the global cut guarantees no tensor
        # is emptied (layer collapse) while the total still equals the target.
        for n in names:
            if torch.isfinite(scores[n]).any():
                reserved[n] = int(torch.argmax(scores[n]))
    flat = torch.cat([scores[n] for n in names])
    sizes = torch.cat(list(_sizes(group_scores, group_size).values()))
    offsets = torch.tensor([0] + [len(scores[n]) for n in names]).cumsum(0)
    target = round(sum(numel.values()) * density)
    for i, n in enumerate(names):
        if n in reserved:
            flat[offsets[i] + reserved[n]] = float("inf")
    keep = select_top(flat, sizes, target)
    return {n: keep[offsets[i] : offsets[i + 1]] for i, n in enumerate(names)}


def _per_tensor(group_scores, group_size, numel, densities):
    out = {}
    for n, s in group_scores.items():
        target = max(group_size[n], round(numel[n] * densities[n]))  # never empty a tensor
        out[n] = select_top(s, torch.full((len(s),), group_size[n], dtype=torch.long), target)
    return out


@ALLOCATIONS.register("uniform", "layerwise")
def allocate_uniform(group_scores, group_size, numel, density, prevent_collapse=False):
    """Every tensor keeps the same fraction `density` (at least one group)."""
    return _per_tensor(group_scores, group_size, numel, {n: density for n in group_scores})


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
def allocate_erk(group_scores, group_size, numel, density, prevent_collapse=False, shapes=None):
    """Per-tensor densities from the ERK formula, then a per-tensor top-k."""
    if shapes is None:
        raise ConfigError("erk allocation needs the tensor shapes")
    return _per_tensor(group_scores, group_size, numel, erk_densities(shapes, density))
