"""Granularities: how per-weight scores become group scores, and group decisions become masks.

A *group* is the unit that is kept or removed together: one weight (unstructured), one
output filter/channel, a block, or a whole kh x kw kernel. Every criterion produces
per-weight scores; a Structure reduces them to one score per group (sum / mean / l2,
configurable) so every criterion works at every granularity. These *grouped*
granularities are ranked by the allocation (global / uniform / erk) directly.

*Per-layer* granularities (N:M, window, window_kernel: prunekit/structure_local.py) are
patterns inside a layer rather than a ranking of groups across layers. For them the
allocation first decides how many weights each layer keeps, and the pattern is then
applied inside every layer with that layer's own count (see `Structure.per_layer`).

Layers a granularity does not fit (window/kernel on a linear layer, N:M when the input
dimension is not a multiple of M) raise a ConfigError naming the layer. Window and kernel
take `linear: weight` as an explicit fallback: linear layers are then pruned unstructured.
"""

from __future__ import annotations

import inspect
import math

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
    #: True when a group is a whole output unit (conv filter / linear row): removing one
    #: deletes a class of the output layer, so that layer is held dense unless asked.
    removes_units = False
    #: True for patterns applied inside each layer with a per-layer count (structure_local.py).
    per_layer = False

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

    def group_units(self, shape: torch.Size) -> Tensor:
        """Long [groups]: the output unit (row of the weight) each group belongs to (its first row)."""
        rows = torch.arange(shape[0]).view(-1, *([1] * (len(shape) - 1))).expand(shape)
        return self.grouped(rows)[:, 0].contiguous()


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
    removes_units = True

    def grouped(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        return g.reshape(shape)


@STRUCTURES.register("kernel")
class KernelStructure(Structure):
    """Whole kh x kw kernels (one input-output channel pair of a conv) kept or removed together.

    Campfire's "kernel" granularity; rank kernels by their norm with `reduce: l2`.
    """

    name = "kernel"

    def __init__(self, reduce: str = "sum", linear: str = "error"):
        super().__init__(reduce)
        self.linear = _check_fallback(self.name, linear)

    def check(self, name: str, shape: torch.Size) -> None:
        _check_conv(self.name, self.linear, name, shape)

    def grouped(self, t: Tensor) -> Tensor:
        if t.dim() < 3:  # linear layer under the `linear: weight` fallback
            return t.reshape(-1, 1)
        return t.reshape(t.shape[0] * t.shape[1], -1)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        return g.reshape(shape)


@STRUCTURES.register("block")
class BlockStructure(Structure):
    """Blocks of `shape` = [out, in] weights (e.g. [4, 1] or [1, 4]); conv blocks stay in one kernel position."""

    name = "block"

    def __init__(self, reduce: str = "sum", shape: tuple[int, int] | list[int] = (4, 1)):
        super().__init__(reduce)
        if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and all(isinstance(v, int) and v >= 1 for v in shape)):
            raise ConfigError(f"block structure: shape {shape!r} must be two positive integers [out, in], e.g. [4, 1].")
        self.bo, self.bi = shape

    def check(self, name: str, shape: torch.Size) -> None:
        if len(shape) < 2 or shape[0] % self.bo or shape[1] % self.bi:
            raise ConfigError(
                f"block structure {self.bo}x{self.bi} does not tile '{name}' of shape {tuple(shape)}: "
                f"out ({shape[0]}) must be a multiple of {self.bo} and in ({shape[1] if len(shape) > 1 else '-'}) "
                f"of {self.bi}. Exclude the layer (prunable.exclude / first_layer: dense) or pick another block shape."
            )

    def grouped(self, t: Tensor) -> Tensor:
        o, i = t.shape[0], t.shape[1]
        s = t.reshape(o, i, -1).permute(2, 0, 1)  # [positions, out, in]
        s = s.reshape(s.shape[0], o // self.bo, self.bo, i // self.bi, self.bi).permute(0, 1, 3, 2, 4)
        return s.reshape(-1, self.bo * self.bi)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        o, i = shape[0], shape[1]
        positions = math.prod(shape[2:])
        s = g.reshape(positions, o // self.bo, i // self.bi, self.bo, self.bi).permute(0, 1, 3, 2, 4)
        return s.reshape(positions, o, i).permute(1, 2, 0).reshape(shape)


FALLBACKS = ("error", "weight")


def _check_fallback(structure: str, linear: str) -> str:
    if linear not in FALLBACKS:
        raise ConfigError(f"{structure} structure: linear={linear!r} is not one of {', '.join(FALLBACKS)}.")
    return linear


def _check_conv(structure: str, linear: str, name: str, shape: torch.Size) -> None:
    """Window/kernel granularities exist only inside conv kernels; linear layers need the fallback."""
    if len(shape) >= 3 or linear == "weight":
        return
    raise ConfigError(
        f"{structure} granularity needs a conv weight [out, in, kh, kw], but '{name}' has shape {tuple(shape)} "
        f"(a linear layer has no kernels). Prune only convs (prunable.types: [conv]) or set "
        f"structure_options: {{linear: weight}} to prune linear layers unstructured."
    )


def create_structure(name: str, reduce: str = "sum", **options) -> Structure:
    """Build a registered granularity by name; unknown options are a ConfigError listing the valid ones."""
    cls = STRUCTURES.get(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "reduce")]
    for key in options:
        if key not in allowed:
            raise ConfigError(f"structure '{name}' has no option '{key}'.{did_you_mean(key, allowed)} "
                              f"Its options: {', '.join(allowed) or '(none)'}.")
    return cls(reduce=reduce, **options)


# Per-layer patterns register themselves into STRUCTURES on import.
from prunekit import structure_local  # noqa: E402,F401
