"""Granularities: how per-weight scores become group scores, and group decisions become masks.

A *group* is the unit that is kept or removed together: one weight (unstructured), one
output filter/channel, a block, or a whole kh x kw kernel. Every criterion produces
per-weight scores; a Structure reduces them to one score per group (sum / mean / l2,
configurable) so every criterion works at every granularity.

Two granularities are *local* constraints rather than a ranking of groups: N:M (every M
consecutive weights along the input dimension keep N) and window (every kh x kw kernel
keeps at most m). They keep weights as single-weight groups but first mark which weights
are *eligible*: the top-`cap` live weights of every local group (`Structure.eligible`),
and rank weights by their rank inside their local group before their score, so every
group keeps its share of its best weights. The usual allocation then picks among the
eligible weights, so the exact total (round(n * density)) and the per-group cap both hold.

Composite granularities (window + kernel, as in Campfire) are a sequence of simple ones
(`Structure.stages`): first whole kernels, then windows inside the surviving kernels.

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

    def eligible(self, score: Tensor, alive: Tensor, density: float) -> Tensor:
        """Bool mask of the live weights that may be kept at `density` (default: every live one).

        Local structures (N:M, window) override this to cap how many weights each local
        group may keep; the allocation then chooses among eligible weights only.
        """
        return alive.bool()

    def stages(self, density: float) -> list[tuple["Structure", float]]:
        """The (structure, density) selections that make up this granularity, applied in order."""
        return [(self, density)]


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


def _rank_in_group(score: Tensor, alive: Tensor) -> Tensor:
    """Long [groups, size]: 0 for the best live entry of each row, 1 for the next... (dead last; ties: earlier first)."""
    s = torch.where(alive, score.double(), torch.full_like(score, float("-inf"), dtype=torch.float64))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order).contiguous())
    return rank


def _top_per_group(score: Tensor, alive: Tensor, cap: int) -> Tensor:
    """Bool [groups, size]: the `cap` best-scoring live entries of every row."""
    return alive & (_rank_in_group(score, alive) < cap)


class LocalStructure(WeightStructure):
    """Base for within-group top-k constraints: weights are ranked individually, but each
    local group (`local`) may keep at most `cap(density, size)` of them."""

    def local(self, t: Tensor) -> Tensor:
        """View `t` as [local groups, local group size]."""
        raise NotImplementedError

    def unlocal(self, g: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of `local`."""
        raise NotImplementedError

    def cap(self, density: float, size: int) -> int:
        """Most weights one local group may keep at `density`."""
        raise NotImplementedError

    def applies(self, shape: torch.Size) -> bool:
        """Whether the local constraint applies to a tensor of `shape` (fallbacks return False)."""
        return True

    def eligible(self, score: Tensor, alive: Tensor, density: float) -> Tensor:
        alive = alive.bool()
        if not self.applies(alive.shape):
            return alive
        size = self.local(alive).shape[1]
        top = _top_per_group(self.local(score), self.local(alive), self.cap(density, size))
        return self.unlocal(top, alive.shape)

    def group_scores(self, score: Tensor, alive: Tensor) -> Tensor:
        """Rank weights first by their rank inside their local group, then by score.

        A weight's key is -(rank + 1) / group size, plus a tie-breaker below the smallest gap
        between two such fractions from its score's percentile in the tensor. Every local
        group therefore keeps its share (floor or ceil of size * density) of its best weights
        (Campfire keeps the top-m of every window), which keeps the groups even along a
        gradual schedule, so N:M ends with exactly N per group and counts stay exact.
        """
        alive = alive.bool()
        if not self.applies(alive.shape):
            return super().group_scores(score, alive)
        rank = _rank_in_group(self.local(score), self.local(alive))
        size = rank.shape[1]
        flat = score.reshape(-1).double()
        pct = torch.empty_like(flat)
        pct[torch.sort(flat, stable=True).indices] = torch.arange(len(flat), dtype=torch.float64, device=flat.device) / len(flat)
        key = -(self.unlocal(rank, alive.shape).double() + 1) / size + 1e-7 * pct.view(alive.shape)
        return torch.where(alive, key, torch.full_like(key, float("-inf"))).reshape(-1)


@STRUCTURES.register("nm", "n:m")
class NMStructure(LocalStructure):
    """N:M sparsity: every M consecutive weights along the input dimension keep exactly N.

    For a conv weight [out, in, kh, kw] the groups run along `in` at each kernel position
    (the layout sparse tensor cores expect after im2col with channels last). The pattern
    fixes the density at N/M; on the way there (a gradual schedule) each group keeps at
    most max(N, ceil(M * density)). Asking for a density below N/M is an error.
    """

    name = "nm"

    def __init__(self, reduce: str = "sum", n: int = 2, m: int = 4):
        super().__init__(reduce)
        if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m):
            raise ConfigError(f"nm structure: need integers 1 <= n <= m, got n={n!r}, m={m!r} (e.g. n: 2, m: 4).")
        self.n, self.m = n, m

    def check(self, name: str, shape: torch.Size) -> None:
        if len(shape) < 2 or shape[1] % self.m:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity needs the input dimension of '{name}' (shape {tuple(shape)}) to be a "
                f"multiple of {self.m}. Keep that layer dense (prunable.exclude / first_layer: dense)."
            )

    def local(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1).reshape(-1, self.m)

    def unlocal(self, g: Tensor, shape: torch.Size) -> Tensor:
        o, i = shape[0], shape[1]
        return g.reshape(o, -1, i).permute(0, 2, 1).reshape(shape)

    def cap(self, density: float, size: int) -> int:
        if density < self.n / self.m - 1e-9:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity keeps exactly {self.n / self.m:.4g} of the weights; density {density:.4g} "
                f"(sparsity {1 - density:.4g}) is below it. Set sparsity: {1 - self.n / self.m:.4g}."
            )
        return max(self.n, math.ceil(self.m * density - 1e-9))


@STRUCTURES.register("window")
class WindowStructure(LocalStructure):
    """Campfire's window sparsity: inside every kh x kw kernel at most `m` weights survive.

    Without `m` the per-window cap follows the density: ceil(kh*kw * density), so the total
    is exact and no window holds more than its share rounded up. With `m` the cap is
    max(m, ceil(kh*kw * density)): a gradual schedule tightens it down to `m` once the
    sparsity reaches 1 - m/(kh*kw). `fraction` fixes the cap at ceil(kh*kw * fraction)
    (used by window_kernel). Within a window weights are chosen by score (magnitude).
    """

    name = "window"

    def __init__(self, reduce: str = "sum", m: int | None = None, fraction: float | None = None, linear: str = "error"):
        super().__init__(reduce)
        if m is not None and not (isinstance(m, int) and m >= 1):
            raise ConfigError(f"window structure: m={m!r} must be a positive integer (weights kept per kernel).")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ConfigError(f"window structure: fraction={fraction!r} must be in (0, 1].")
        self.m, self.fraction = m, fraction
        self.linear = _check_fallback(self.name, linear)

    def check(self, name: str, shape: torch.Size) -> None:
        _check_conv(self.name, self.linear, name, shape)

    def applies(self, shape: torch.Size) -> bool:
        return len(shape) >= 3

    def local(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0] * t.shape[1], -1)

    def unlocal(self, g: Tensor, shape: torch.Size) -> Tensor:
        return g.reshape(shape)

    def cap(self, density: float, size: int) -> int:
        share = math.ceil(size * (self.fraction if self.fraction is not None else density) - 1e-9)
        return max(self.m or 0, share)


@STRUCTURES.register("window_kernel", "window+kernel")
class WindowKernelStructure(Structure):
    """Campfire's combination: whole kernels first, then windows inside the surviving kernels.

    A target density d is split as d_kernel = d**split (kernel stage, ranked by kernel
    score) and d_window = d / d_kernel (each surviving kernel keeps at most
    ceil(kh*kw * d_window) weights, or max(m, that) when `m` is given).
    """

    name = "window_kernel"

    def __init__(self, reduce: str = "sum", m: int | None = None, split: float = 0.5, linear: str = "error"):
        super().__init__(reduce)
        if not 0.0 <= split <= 1.0:
            raise ConfigError(f"window_kernel structure: split={split!r} must be in [0, 1] (share of sparsity taken by kernels).")
        self.m, self.split, self.linear = m, split, _check_fallback(self.name, linear)
        self.kernel = KernelStructure(reduce, linear)
        WindowStructure(m=m, linear=linear)  # validates m

    def check(self, name: str, shape: torch.Size) -> None:
        _check_conv(self.name, self.linear, name, shape)

    def grouped(self, t: Tensor) -> Tensor:
        return self.kernel.grouped(t)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        return self.kernel.ungroup(g, shape)

    def stages(self, density: float) -> list[tuple[Structure, float]]:
        d_kernel = density**self.split
        window = WindowStructure(m=self.m, fraction=min(1.0, density / d_kernel), linear=self.linear)
        return [(self.kernel, d_kernel), (window, density)]


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
