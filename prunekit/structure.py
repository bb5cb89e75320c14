"""Granularities: how per-weight scores become group scores, and group decisions become masks.

A *group* is the unit that is kept or removed together: one weight (unstructured), one
output filter/channel, and, in the structured-sparsity extensions, a block, a kernel or a
window. Every criterion produces per-weight scores; a Structure reduces them to one score
per group (sum / mean / l2, configurable) so every criterion works at every granularity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.errors import ConfigError, did_you_mean
from prunekit.registry import Registry

STRUCTURES: Registry["Structure"] = Registry("structure")


def reduce_scores(x: Tensor, how: str, dim: int) -> Tensor:
    """Reduce per-weight scores along `dim` (the within-group axis) by sum, mean or l2."""
    if how == "sum":
        return x.sum(dim)
    if how == "mean":
        return x.mean(dim)
    if how == "l2":
        return x.pow(2).sum(dim).sqrt()
    raise ConfigError(f"score reduction '{how}' is unknown.{did_you_mean(how, REDUCTIONS)} Allowed: {', '.join(REDUCTIONS)}.")


REDUCTIONS = ("sum", "mean", "l2")


class Structure:
    """Base class: a granularity. Subclasses define how a weight tensor splits into groups.

    `grouped(t)` reshapes a tensor of the weight's shape to [groups, group_size]; the
    defaults below then derive group scores, group liveness and masks from it.
    """

    name = "base"

    def __init__(self, reduce: str = "sum"):
        if reduce not in REDUCTIONS:
            reduce_scores(torch.zeros(1), reduce, 0)  # raises the helpful error
        self.reduce = reduce

    def check(self, name: str, shape: torch.Size) -> None:
        """Raise ConfigError if this granularity does not fit a tensor of `shape`."""

    def grouped(self, t: Tensor) -> Tensor:
        """View `t` (weight-shaped) as [num_groups, group_size]."""
        raise NotImplementedError

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of `grouped` for a [num_groups, group_size] tensor."""
        raise NotImplementedError

    def group_scores(self, score: Tensor, alive: Tensor) -> Tensor:
        """One score per group; groups with no live weight get -inf so they are never revived."""
        g_alive = self.grouped(alive).bool()
        s = reduce_scores(self.grouped(score * alive), self.reduce, 1).double()
        return torch.where(g_alive.any(1), s, torch.full_like(s, float("-inf")))

    def group_size(self, shape: torch.Size) -> int:
        """Number of weights in each group."""
        return int(self.grouped(torch.empty(shape, device="meta")).shape[1])

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        """Turn a bool vector over groups into a 0/1 mask of the weight's shape."""
        size = self.group_size(shape)
        return self.ungroup(keep.view(-1, 1).expand(-1, size), shape).float()


@STRUCTURES.register("weight", "unstructured")
class WeightStructure(Structure):
    """Unstructured: every weight is its own group."""

    name = "weight"

    def grouped(self, t: Tensor) -> Tensor:
        return t.reshape(-1, 1)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        return g.reshape(shape)


@STRUCTURES.register("channel", "filter")
class ChannelStructure(Structure):
    """Whole output channels (conv filters / linear rows) are kept or removed together."""

    name = "channel"

    def grouped(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        return g.reshape(shape)


def create_structure(name: str, reduce: str = "sum", **options) -> Structure:
    """Build a registered granularity by name."""
    return STRUCTURES.create(name, reduce=reduce, **options)
